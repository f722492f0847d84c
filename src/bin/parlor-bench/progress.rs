//! Progress on stderr: a rewritten line on a terminal, a line every 5 s
//! otherwise.

use std::cell::Cell;
use std::fmt::Arguments;
use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::pin::pin;
use std::time::{Duration, Instant};

use crate::window::Window;

/// Where a run shows how far it got.
pub struct Progress {
    tty: bool,
    last: Cell<Option<Instant>>,
    shown: Cell<bool>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Cell::new(None),
            shown: Cell::new(false),
        }
    }

    pub fn show(&self, line: &str) {
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        if self.last.get().is_some_and(|last| now - last < every) {
            return;
        }
        self.last.set(Some(now));
        let mut stderr = std::io::stderr().lock();
        if self.tty {
            let _ = write!(stderr, "\r{line}\x1b[K");
            self.shown.set(true);
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }

    pub fn done(&self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.tty && self.shown.get() {
            let _ = write!(stderr, "\r\x1b[K");
        }
        let _ = writeln!(stderr, "{line}");
        self.shown.set(false);
        self.last.set(None);
    }

    /// Shows how far a scenario's measured part got, as
    /// `<scenario>: <elapsed>s/<length>s  <detail>`.
    pub fn measuring(&self, scenario: &str, window: &Window, detail: Arguments) {
        self.show(&format!(
            "{scenario}: {:.0}s/{:.0}s  {detail}",
            window.started.elapsed().as_secs_f64(),
            (window.deadline - window.started).as_secs_f64()
        ));
    }

    /// Awaits `work`, showing `line()` meanwhile.
    pub async fn showing<T>(&self, work: impl Future<Output = T>, line: impl Fn() -> String) -> T {
        let mut work = pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = tick.tick() => self.show(&line()),
            }
        }
    }
}
