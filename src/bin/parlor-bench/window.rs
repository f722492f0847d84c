//! The measured part of a scenario: its clock, its bounds (`--duration`,
//! `--max-iterations`), and the server CPU time spent in it.

use std::time::{Duration, Instant};

use crate::probe::{cpu_delta, ProcSample};
use crate::run::Ctx;
use crate::Args;

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub started: Instant,
    pub deadline: Instant,
    /// Messages (or exchanges) after which the measurement stops early.
    pub max: u64,
    /// The server's reading as the window opened (with `--server-pid`).
    pub cpu_start: Option<ProcSample>,
}

impl Window {
    /// Opens the window now; setup is over.
    pub fn open(ctx: &Ctx, args: &Args) -> Window {
        let cpu_start = ctx.probe.server();
        let started = Instant::now();
        Window {
            started,
            deadline: started + args.duration,
            max: args.max_iterations.unwrap_or(u64::MAX),
            cpu_start,
        }
    }

    /// Whether to go on after `done` messages.
    pub fn running(&self, done: u64) -> bool {
        Instant::now() < self.deadline && done < self.max
    }

    /// How long the window was open, and the server CPU seconds spent in it.
    pub fn close(&self, ctx: &Ctx) -> (Duration, Option<f64>) {
        let elapsed = self.started.elapsed();
        (elapsed, cpu_delta(self.cpu_start, ctx.probe.server()))
    }
}
