//! The GET/repair decision for one stripe: serve, read more shards, reconstruct, or give up.
//!
//! The caller reads blocks and reports each shard's state; [`next_action`] says what to do next.
//! Reads go to as few shards as possible: the data shards that hold the wanted bytes first, then
//! only as many others as are needed to reach K good ones.

use crate::EcParams;
use std::ops::Range;

/// What is known about one shard's block of the stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Not read yet.
    Unread,
    /// Read and verified.
    Good,
    /// Missing, unreadable or failed verification.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeAction {
    /// Every wanted shard is good: copy the bytes out.
    Serve,
    /// Read these shards next.
    Read(Vec<usize>),
    /// At least K shards are good: rebuild the others.
    Reconstruct,
    /// Fewer than K shards can be good: the stripe is lost.
    Insufficient { have: usize, need: usize },
}

/// Decides the next step for a stripe whose shards `want` are needed.
pub fn next_action(ec: EcParams, want: Range<usize>, states: &[BlockState]) -> StripeAction {
    assert_eq!(states.len(), ec.total());
    let k = ec.k();
    let unread_wanted: Vec<usize> = want
        .clone()
        .filter(|&i| states[i] == BlockState::Unread)
        .collect();
    if !unread_wanted.is_empty() {
        return StripeAction::Read(unread_wanted);
    }
    if want.clone().all(|i| states[i] == BlockState::Good) {
        return StripeAction::Serve;
    }
    let good = states.iter().filter(|s| **s == BlockState::Good).count();
    if good >= k {
        return StripeAction::Reconstruct;
    }
    let unread: Vec<usize> = (0..states.len())
        .filter(|&i| states[i] == BlockState::Unread)
        .collect();
    if good + unread.len() < k {
        return StripeAction::Insufficient {
            have: good,
            need: k,
        };
    }
    StripeAction::Read(unread.into_iter().take(k - good).collect())
}

#[cfg(test)]
mod tests {
    use super::BlockState::*;
    use super::*;

    fn ec() -> EcParams {
        EcParams::new(4, 2).unwrap()
    }

    #[test]
    fn healthy_reads_only_what_is_wanted() {
        let mut s = [Unread; 6];
        assert_eq!(next_action(ec(), 1..3, &s), StripeAction::Read(vec![1, 2]));
        s[1] = Good;
        s[2] = Good;
        assert_eq!(next_action(ec(), 1..3, &s), StripeAction::Serve);
    }

    #[test]
    fn a_bad_shard_pulls_in_just_enough_others() {
        let s = [Good, Bad, Unread, Unread, Unread, Unread];
        assert_eq!(
            next_action(ec(), 0..2, &s),
            StripeAction::Read(vec![2, 3, 4])
        );
        let s = [Good, Bad, Good, Good, Bad, Unread];
        assert_eq!(next_action(ec(), 0..2, &s), StripeAction::Read(vec![5]));
        let s = [Good, Bad, Good, Good, Bad, Good];
        assert_eq!(next_action(ec(), 0..2, &s), StripeAction::Reconstruct);
        let s = [Good, Bad, Good, Bad, Bad, Unread];
        assert_eq!(
            next_action(ec(), 0..2, &s),
            StripeAction::Insufficient { have: 2, need: 4 }
        );
    }

    #[test]
    fn every_loss_pattern_terminates_correctly() {
        // Simulate: each shard is secretly good or bad; follow the actions until a verdict.
        for mask in 0u32..64 {
            let truth: Vec<bool> = (0..6).map(|i| mask & (1 << i) == 0).collect();
            let goods = truth.iter().filter(|g| **g).count();
            for want in [0..1, 0..4, 2..4] {
                let mut s = [Unread; 6];
                let mut reads = 0;
                let verdict = loop {
                    match next_action(ec(), want.clone(), &s) {
                        StripeAction::Read(list) => {
                            assert!(!list.is_empty());
                            for i in list {
                                assert_eq!(s[i], Unread, "re-read of {i}");
                                s[i] = if truth[i] { Good } else { Bad };
                                reads += 1;
                            }
                        }
                        other => break other,
                    }
                };
                assert!(reads <= 6);
                match verdict {
                    StripeAction::Serve => assert!(want.clone().all(|i| truth[i])),
                    StripeAction::Reconstruct => assert!(goods >= 4),
                    StripeAction::Insufficient { .. } => assert!(goods < 4),
                    StripeAction::Read(_) => unreachable!(),
                }
            }
        }
    }
}
