//! Failure detection: a phi-accrual detector (Hayashibara et al., 2004) over each node's
//! heartbeats. Sans-IO: time comes in as milliseconds, nothing here reads a clock.
//!
//! Each node's heartbeats arrive every [`crate::cluster::HEARTBEAT_MS`]; the detector keeps the
//! last [`WINDOW`] intervals between them and, at time `now`, the suspicion level
//! `phi = -log10(P(the next heartbeat comes later than now))` under a normal distribution of
//! those intervals (its mean shifted by [`Config::pause_ms`], its deviation at least
//! [`Config::min_std_ms`]). A node whose phi reaches [`Config::threshold`] is judged down. With
//! steady heartbeats every 250 ms that takes about 1.8 s of silence; with intervals that jitter
//! (a loaded machine), proportionally longer, so a slow node is not taken for a dead one.
//!
//! The detector itself can be stalled (its process descheduled): then every node looks silent
//! at once. [`Liveness::paused`] shifts every node's last heartbeat by the stall, so a stall of
//! the judge never condemns the judged.

use std::collections::{HashMap, VecDeque};

/// Intervals kept per node.
pub const WINDOW: usize = 64;

/// How the detector weighs silence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// phi at which a node is judged down (8: a one-in-10^8 chance that it is only late).
    pub threshold: f64,
    /// Floor of the intervals' standard deviation, in ms: perfectly regular heartbeats would
    /// otherwise make the smallest delay look fatal.
    pub min_std_ms: f64,
    /// Silence tolerated on top of the usual interval, in ms (a hiccup of the network or of
    /// the node's scheduler).
    pub pause_ms: f64,
    /// The interval assumed before any was measured, in ms.
    pub first_interval_ms: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 8.0,
            min_std_ms: 100.0,
            pause_ms: 1_000.0,
            first_interval_ms: crate::cluster::HEARTBEAT_MS as f64,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct History {
    last_ms: u64,
    intervals: VecDeque<u64>,
    sum: u64,
    sum_sq: u128,
}

impl History {
    fn add(&mut self, interval: u64) {
        if self.intervals.len() == WINDOW {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= u128::from(old) * u128::from(old);
            }
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += u128::from(interval) * u128::from(interval);
    }

    /// Mean and standard deviation of the intervals, in ms.
    fn stats(&self, cfg: &Config) -> (f64, f64) {
        let n = self.intervals.len();
        if n == 0 {
            return (cfg.first_interval_ms, cfg.first_interval_ms / 4.0);
        }
        let mean = self.sum as f64 / n as f64;
        let var = (self.sum_sq as f64 / n as f64 - mean * mean).max(0.0);
        (mean, var.sqrt())
    }
}

/// Heartbeat histories of the nodes this process has heard from.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    cfg: Config,
    nodes: HashMap<u32, History>,
}

impl Liveness {
    pub fn new(cfg: Config) -> Liveness {
        Liveness {
            cfg,
            nodes: HashMap::new(),
        }
    }

    /// A heartbeat of `node` arrived at `now_ms`. One that comes after the node was already
    /// judged down starts its history afresh: the silence was an absence (a restart, a
    /// partition), not the node's rhythm, and counting it would blunt the next detection.
    pub fn heartbeat(&mut self, node: u32, now_ms: u64) {
        let returned = self.down(node, now_ms);
        let h = self.nodes.entry(node).or_default();
        if returned {
            *h = History::default();
        } else if h.last_ms != 0 && now_ms > h.last_ms {
            h.add(now_ms - h.last_ms);
        }
        h.last_ms = h.last_ms.max(now_ms);
    }

    /// The suspicion level of `node` at `now_ms`; `None` if it was never heard from.
    pub fn phi(&self, node: u32, now_ms: u64) -> Option<f64> {
        let h = self.nodes.get(&node)?;
        let (mean, std) = h.stats(&self.cfg);
        let elapsed = now_ms.saturating_sub(h.last_ms) as f64;
        Some(phi(
            elapsed,
            mean + self.cfg.pause_ms,
            std.max(self.cfg.min_std_ms),
        ))
    }

    /// Whether `node` is judged down at `now_ms` (never heard from: not judged here).
    pub fn down(&self, node: u32, now_ms: u64) -> bool {
        self.phi(node, now_ms)
            .is_some_and(|p| p >= self.cfg.threshold)
    }

    /// The detector was stalled for `ms` (its own timer fired that late): silence in that time
    /// says nothing about the nodes.
    pub fn paused(&mut self, ms: u64) {
        for h in self.nodes.values_mut() {
            h.last_ms = h.last_ms.saturating_add(ms);
        }
    }

    /// Silence after which a node with perfectly steady heartbeats every `interval_ms` is
    /// judged down: what the documentation quotes.
    pub fn detection_ms(&self, interval_ms: f64) -> f64 {
        let std = self.cfg.min_std_ms.max(0.0);
        let mean = interval_ms + self.cfg.pause_ms;
        // phi is increasing in the silence: bisect.
        let (mut lo, mut hi) = (0.0f64, mean + 100.0 * std.max(1.0));
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if phi(mid, mean, std.max(1.0)) >= self.cfg.threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// `-log10(P(X > elapsed))` for X normal with `mean` and `std`, by the logistic approximation
/// of the normal CDF (error under 1.4e-4): P(X > t) = 1 / (1 + e^x) with
/// x = y (1.5976 + 0.070566 y²), y = (t - mean) / std; so phi = log10(1 + e^x), computed so
/// that long silences give large finite values instead of overflowing.
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let x = y * (1.5976 + 0.070566 * y * y);
    if x > 30.0 {
        // log10(1 + e^x) = x / ln 10 + log10(1 + e^-x), the last term below 1e-13.
        x / std::f64::consts::LN_10
    } else {
        x.exp().ln_1p() / std::f64::consts::LN_10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(l: &mut Liveness, node: u32, from: u64, every: u64, n: u64) -> u64 {
        let mut t = from;
        for _ in 0..n {
            l.heartbeat(node, t);
            t += every;
        }
        t - every
    }

    #[test]
    fn steady_heartbeats_are_judged_down_after_about_two_seconds_of_silence() {
        let mut l = Liveness::new(Config::default());
        let last = steady(&mut l, 1, 1_000, 250, 40);
        assert!(!l.down(1, last + 1_000));
        assert!(!l.down(1, last + 1_500));
        assert!(l.down(1, last + 2_000));
        let d = l.detection_ms(250.0);
        assert!((1_500.0..2_000.0).contains(&d), "{d}");
        // Monotone in the silence.
        let mut prev = 0.0;
        for ms in (0..5_000).step_by(50) {
            let p = l.phi(1, last + ms).unwrap();
            assert!(p >= prev, "{ms}: {p} < {prev}");
            prev = p;
        }
        assert!(prev.is_finite() && prev > 30.0);
    }

    #[test]
    fn jittery_heartbeats_get_more_rope() {
        let mut l = Liveness::new(Config::default());
        let mut t = 0;
        for i in 0..64u64 {
            t += if i % 2 == 0 { 100 } else { 900 };
            l.heartbeat(2, t);
        }
        // Mean 500 ms, deviation 400 ms: 2 s of silence is not yet fatal.
        assert!(!l.down(2, t + 2_000));
        assert!(l.down(2, t + 6_000));
    }

    #[test]
    fn unknown_nodes_are_not_judged_and_a_stalled_judge_condemns_nobody() {
        let mut l = Liveness::new(Config::default());
        assert_eq!(l.phi(9, 10_000), None);
        assert!(!l.down(9, 10_000));
        let last = steady(&mut l, 3, 0, 250, 20);
        assert!(l.down(3, last + 5_000));
        l.paused(5_000);
        assert!(!l.down(3, last + 5_000));
        // One heartbeat is enough to start judging (with the assumed interval).
        l.heartbeat(4, 100);
        assert!(!l.down(4, 1_000) && l.down(4, 3_000));
    }

    #[test]
    fn a_node_back_from_an_absence_is_judged_by_its_rhythm_not_its_absence() {
        let mut l = Liveness::new(Config::default());
        let last = steady(&mut l, 6, 0, 250, 40);
        // A minute away, then steady again: detected as fast as before the absence.
        let back = steady(&mut l, 6, last + 60_000, 250, 8);
        assert!(l.nodes[&6].intervals.iter().all(|&i| i == 250));
        assert!(!l.down(6, back + 1_500) && l.down(6, back + 2_000));
    }

    #[test]
    fn a_late_or_reordered_timestamp_never_goes_backwards() {
        let mut l = Liveness::new(Config::default());
        l.heartbeat(5, 1_000);
        l.heartbeat(5, 900);
        assert_eq!(l.nodes[&5].last_ms, 1_000);
        assert!(l.nodes[&5].intervals.is_empty());
    }
}
