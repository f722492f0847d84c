//! A real nginx (Debian's package) in front of a test server: started on a
//! free port with its own prefix directory and parlor's shipped proxy
//! settings (`contrib/nginx/parlor-proxy.conf`), or in front of cluster
//! nodes with the shipped `contrib/nginx/parlor-cluster.conf`; stopped on
//! drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    process: Child,
    dir: PathBuf,
}

/// The nginx binary: `PARLOR_NGINX`, else Debian's path.
fn binary() -> PathBuf {
    std::env::var_os("PARLOR_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// A file shipped in `contrib/nginx/`.
fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/nginx")
        .join(name)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

impl Nginx {
    /// nginx on 127.0.0.1, proxying everything to `upstream`.
    pub fn start(upstream: SocketAddr) -> Nginx {
        let proxy_conf = contrib("parlor-proxy.conf");
        Nginx::start_with(|port| {
            format!(
                "upstream parlor {{ server {upstream}; keepalive 16; }}\n\
                 server {{\n\
                   listen 127.0.0.1:{port};\n\
                   location / {{\n\
                     proxy_pass http://parlor;\n\
                     include {proxy_conf};\n\
                   }}\n\
                 }}\n",
                proxy_conf = proxy_conf.display(),
            )
        })
    }

    /// nginx on 127.0.0.1 with the shipped cluster configuration
    /// (`contrib/nginx/parlor-cluster.conf`) as is, but for its addresses:
    /// its three upstream servers become `nodes`.
    pub fn start_cluster(nodes: [SocketAddr; 3]) -> Nginx {
        let shipped = std::fs::read_to_string(contrib("parlor-cluster.conf"))
            .expect("contrib/nginx/parlor-cluster.conf is readable");
        Nginx::start_with(|port| {
            let mut conf = shipped
                .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
                .replace(
                    "/etc/nginx/parlor-proxy.conf",
                    &contrib("parlor-proxy.conf").display().to_string(),
                );
            for (example, node) in ["10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080"]
                .iter()
                .zip(nodes)
            {
                assert!(conf.contains(example), "the shipped file names {example}");
                conf = conf.replace(example, &node.to_string());
            }
            conf
        })
    }

    /// nginx on 127.0.0.1 with `http` (given the port to listen on) inside
    /// its `http` block. A free port can be taken by another test between
    /// our finding it and nginx binding it; nginx then exits, and it is
    /// started again on another port.
    fn start_with(http: impl Fn(u16) -> String) -> Nginx {
        let nginx = binary();
        assert!(
            nginx.exists(),
            "{} is missing: install Debian's nginx (scripts/test.sh does)",
            nginx.display()
        );
        let mut attempt = 1;
        loop {
            let mut started = Nginx::spawn(&nginx, &http);
            match started.wait_until_listening() {
                Ok(()) => return started,
                Err(log) if log.contains("Address already in use") && attempt < 5 => {
                    attempt += 1;
                }
                Err(log) => panic!("nginx did not start: {log}"),
            }
        }
    }

    fn spawn(nginx: &Path, http: &impl Fn(u16) -> String) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "parlor-nginx-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("nginx prefix directory");
        let port = free_port();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               {http}\n\
             }}\n",
            dir = dir.display(),
            http = http(port),
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let process = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        Nginx { addr, process, dir }
    }

    /// Waits until this nginx serves its port, or says why it exited (its
    /// error log). nginx writes its pid file only once it has bound its
    /// port: a connection that succeeds before then may be to another
    /// process on the same port, so it does not count.
    fn wait_until_listening(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited with {status}: {log}"));
            }
            if self.dir.join("nginx.pid").exists()
                && std::net::TcpStream::connect(self.addr).is_ok()
            {
                return Ok(());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not listen on {} within 20 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
