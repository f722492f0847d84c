//! The `parlor` binary as an operator runs it: flags, environment, the
//! announced address, and shutdown on SIGTERM.
//!
//! Each test starts the real executable (`CARGO_BIN_EXE_parlor`) as a child
//! process (`common::process`) and talks to it over raw TCP. What it logs
//! is tested in `logging.rs`.

#![cfg(unix)] // SIGTERM is sent with kill(1)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{
    http, join, kill_term, parlor, parse, run_to_exit, start, stop_cleanly, PATIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn announces_the_real_port_and_serves() {
    let mut server = start(
        parlor(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--poll-timeout",
            "20s",
        ],
    )
    .await;
    assert!(server.addr.ip().is_loopback());
    assert_ne!(
        server.addr.port(),
        0,
        "the announced port must be the bound one"
    );

    let (status, body) = http(server.addr, "GET", "/healthz", None).await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    let joined = join(server.addr, "ann").await;
    assert_eq!(joined["poll_timeout_ms"], 20_000);

    server.child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, server.child.wait()).await;
}

#[tokio::test]
async fn help_lists_every_flag() {
    let mut command = parlor();
    command.env("PARLOR_ADMIN_TOKEN", "hunter2-do-not-print");
    let (status, stdout, _) = run_to_exit(command, &["--help"]).await;
    assert!(status.success(), "--help exits 0: {status}");
    for flag in [
        "--listen",
        "--data-dir",
        "--ephemeral",
        "--poll-timeout",
        "--inactivity-timeout",
        "--admin-token",
        "--public-dir",
        "--max-connections",
        "--header-timeout",
        "--help",
        "PARLOR_POLL_TIMEOUT",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("hunter2-do-not-print"),
        "--help printed the admin token from the environment:\n{stdout}"
    );
}

#[tokio::test]
async fn bad_flags_exit_non_zero_with_a_reason() {
    let (status, stdout, stderr) = run_to_exit(
        parlor(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--poll-timeout",
            "soon",
        ],
    )
    .await;
    assert!(!status.success(), "--poll-timeout soon must fail");
    assert!(
        !stdout.contains("listening on"),
        "it started anyway: {stdout}"
    );
    assert!(
        stderr.contains("--poll-timeout"),
        "the message names the flag: {stderr}"
    );
    assert!(
        stderr.contains("soon"),
        "the message quotes the value: {stderr}"
    );

    let (status, _, stderr) = run_to_exit(parlor(), &["--listen", "nowhere", "--ephemeral"]).await;
    assert!(!status.success(), "--listen nowhere must fail");
    assert!(stderr.contains("--listen"), "{stderr}");

    let (status, _, stderr) = run_to_exit(parlor(), &["--ephemeral", "--no-such-flag"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--no-such-flag"), "{stderr}");

    // The environment is checked as strictly as the flags.
    let mut command = parlor();
    command.env("PARLOR_POLL_TIMEOUT", "soon");
    let (status, stdout, stderr) =
        run_to_exit(command, &["--listen", "127.0.0.1:0", "--ephemeral"]).await;
    assert!(!status.success(), "PARLOR_POLL_TIMEOUT=soon must fail");
    assert!(!stdout.contains("listening on"));
    assert!(stderr.contains("soon"), "{stderr}");
}

#[tokio::test]
async fn a_taken_port_is_a_clear_startup_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stdout, stderr) = run_to_exit(parlor(), &["--listen", &addr, "--ephemeral"]).await;
    assert!(!status.success(), "listening on a taken port must fail");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains(&addr),
        "the message names the address: {stderr}"
    );
}

#[tokio::test]
async fn the_environment_works_like_the_flags() {
    let mut command = parlor();
    command
        .env("PARLOR_POLL_TIMEOUT", "7s")
        .env("PARLOR_INACTIVITY_TIMEOUT", "90s")
        .env("PARLOR_LISTEN", "127.0.0.1:0")
        .env("PARLOR_EPHEMERAL", "true");
    let mut server = start(command, &[]).await;
    let joined = join(server.addr, "ann").await;
    assert_eq!(joined["poll_timeout_ms"], 7_000);
    assert_eq!(joined["inactivity_timeout_ms"], 90_000);
    server.child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, server.child.wait()).await;

    // A flag given on the command line wins over the environment.
    let mut command = parlor();
    command.env("PARLOR_POLL_TIMEOUT", "7s");
    let mut server = start(
        command,
        &[
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--poll-timeout",
            "3s",
        ],
    )
    .await;
    let joined = join(server.addr, "ann").await;
    assert_eq!(joined["poll_timeout_ms"], 3_000);
    server.child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, server.child.wait()).await;
}

#[tokio::test]
async fn sigterm_answers_parked_polls_and_exits_cleanly() {
    let mut server = start(
        parlor(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--poll-timeout",
            "20s",
        ],
    )
    .await;
    let addr = server.addr;
    let joined = join(addr, "ann").await;
    let token = joined["token"].as_str().unwrap().to_owned();

    // Read what is already waiting (ann's own presence) so the next poll parks.
    let mut cursor = joined["cursor"].as_u64().unwrap();
    loop {
        let (status, answer) = http(
            addr,
            "GET",
            &format!("/poll?token={token}&cursor={cursor}&timeout=0"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        cursor = answer["cursor"].as_u64().unwrap();
        if answer["events"].as_array().unwrap().is_empty() {
            break;
        }
    }

    // An idle keep-alive connection must not hold up the exit either.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, idle.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );

    // A poll with the full 20 s wait.
    let target = format!("/poll?token={token}&cursor={cursor}");
    let mut poll = tokio::spawn(async move { http(addr, "GET", &target, None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the poll should be parked, not answered"
    );

    let signalled = Instant::now();
    kill_term(&server.child);

    let (status, answer) = tokio::time::timeout(Duration::from_secs(5), &mut poll)
        .await
        .expect("the parked poll was not answered at shutdown")
        .expect("the poll task did not panic");
    let answered_after = signalled.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"cursor": cursor, "events": []}));

    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .expect("parlor did not exit after SIGTERM")
        .unwrap();
    let exited_after = signalled.elapsed();
    assert!(exit.success(), "SIGTERM is a clean exit, got {exit}");
    // Well under the 20 s poll timeout, and under the 5 s grace period that
    // would mean a connection had to be given up on.
    assert!(
        answered_after < Duration::from_secs(4),
        "poll answered after {answered_after:?}"
    );
    assert!(
        exited_after < Duration::from_secs(4),
        "exited after {exited_after:?}"
    );

    // The idle connection was closed rather than left to the kernel.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection stayed open after exit");
}

/// The status of a POST /api/publish to nobody with `Authorization: Bearer
/// {bearer}`.
async fn publish_status(addr: SocketAddr, bearer: &str) -> u16 {
    let body = r#"{"users":[],"data":"x"}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect to parlor");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    parse(&response).0
}

#[tokio::test]
async fn the_admin_token_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("parlor-admin-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("admin-token");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--ephemeral"];

    let mut server = start(
        parlor(),
        &[&listen[..], &["--admin-token-file", file_arg]].concat(),
    )
    .await;
    // The file's newline is not part of the token.
    assert_eq!(publish_status(server.addr, "s3cret-from-file").await, 200);
    assert_eq!(publish_status(server.addr, "wrong").await, 401);
    server.child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, server.child.wait()).await;

    // The environment names the file as well as the flag does.
    let mut command = parlor();
    command.env("PARLOR_ADMIN_TOKEN_FILE", &file);
    let mut server = start(command, &listen).await;
    assert_eq!(publish_status(server.addr, "s3cret-from-file").await, 200);
    server.child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, server.child.wait()).await;

    // What cannot give a token stops the start with a reason.
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.join("missing");
    for (args, reason) in [
        (
            vec!["--admin-token-file", empty.to_str().unwrap()],
            "is empty",
        ),
        (
            vec!["--admin-token-file", missing.to_str().unwrap()],
            "cannot read the admin token file",
        ),
        (
            vec!["--admin-token-file", file_arg, "--admin-token", "x"],
            "cannot be used with",
        ),
    ] {
        let (status, _, stderr) = run_to_exit(parlor(), &[&listen[..], &args].concat()).await;
        assert!(!status.success(), "{args:?} started");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let mut command = parlor();
    command.env("PARLOR_ADMIN_TOKEN", "x");
    let (status, _, stderr) = run_to_exit(
        command,
        &[&listen[..], &["--admin-token-file", file_arg]].concat(),
    )
    .await;
    assert!(
        !status.success(),
        "a token from the environment and a file: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_shipped_systemd_unit_starts_parlor_and_stops_it_cleanly() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/parlor.service"
    ))
    .expect("contrib/systemd/parlor.service is readable");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    let mut words = exec_start.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/parlor"));
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    assert!(unit.contains("KillSignal=SIGTERM"), "{unit}");

    // The unit's own flags, with its machine paths and port swapped for
    // this test's: every flag it names must be one parlor accepts.
    let data_dir = std::env::temp_dir().join(format!("parlor-unit-{}", std::process::id()));
    let data_dir_text = data_dir.to_string_lossy().into_owned();
    let public_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/public");
    let args: Vec<&str> = words
        .map(|word| match word {
            "/var/lib/parlor" => data_dir_text.as_str(),
            "/usr/local/share/parlor/public" => public_dir,
            "127.0.0.1:8080" => "127.0.0.1:0",
            other => other,
        })
        .collect();
    assert!(args.contains(&"--data-dir"), "{args:?}");
    let mut server = start(parlor(), &args).await;
    join(server.addr, "ann").await;
    stop_cleanly(&mut server).await;
    assert!(
        data_dir.join("parlor.db").exists(),
        "no database in {data_dir:?}"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}
