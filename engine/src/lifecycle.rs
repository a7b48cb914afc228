//! The end of a write's shard files, decided without I/O: [`Commit`] takes what happened (the
//! files were written, the commit's answer or its absence, what the intent says afterwards) and
//! answers with what to do next. The data plane carries the actions out (metadata calls, file
//! removal); the simulator runs the same machine against simulated failures.
//!
//! A write first records an intent listing the files it is about to create, then writes and
//! syncs them, then asks the metadata store to commit the version (which marks the intent
//! committed in the same transaction). The files then end one of two ways: referenced by the
//! content (the intent is ended) or deleted (then the intent is ended). The hard case is a
//! commit whose answer never came (a lost connection, a timeout): it may have committed. The
//! files must not be deleted on a guess, as the content may already be referenced, even by
//! later writes of the same bytes that deduplicated onto it. So the machine fences first: it
//! abandons the intent (a transaction that moves only an uncommitted intent to `Abandoned`,
//! after which no commit of it can land), then reads the intent back and follows what it says.

/// What the metadata store says of the intent after the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentFate {
    /// The commit landed: the version is `version`; `adopted` if this write's files hold the
    /// content (else the content was already stored and these files are spare).
    Committed {
        version: u64,
        created_ms: u64,
        adopted: bool,
    },
    /// No commit can land any more: the files are this write's to delete.
    Abandoned,
    /// The intent is gone (someone else resolved it): nothing is known of the files.
    Gone,
}

/// How the files of an intent end once it was fenced and read back, for whoever resolves it
/// (the writer itself, or the sweep for a writer taken as gone): `Some(true)` delete the files,
/// then end the intent; `Some(false)` only end it (the files are referenced); `None` touch
/// nothing.
pub fn settle(fate: IntentFate) -> Option<bool> {
    match fate {
        IntentFate::Committed { adopted, .. } => Some(!adopted),
        IntentFate::Abandoned => Some(true),
        IntentFate::Gone => None,
    }
}

/// What happened, in the order it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Every file was written and synced (or writing gave up, `ok: false`).
    Written { ok: bool },
    /// The commit's answer: it landed.
    Committed {
        version: u64,
        created_ms: u64,
        deduplicated: bool,
        replaced_damaged: bool,
    },
    /// The commit's answer: refused (a condition, the bucket, the intent given up): nothing
    /// was committed.
    Refused,
    /// No answer to the commit: it may have landed.
    Unknown,
    /// The fence's answer (`ok: false`: no answer either).
    Fenced { ok: bool },
    /// The intent as read after the fence (`None`: no answer).
    Read(Option<IntentFate>),
}

/// What to do next. Several actions may come from one event; they are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the metadata store to commit the version.
    CommitVersion,
    /// Abandon the intent (only if not committed): the fence.
    Fence,
    /// Read the intent.
    ReadIntent,
    /// Delete the files, then end the intent.
    Discard,
    /// The files are referenced: end the intent.
    EndIntent,
    /// Delete the files of the damaged copy the new content replaced.
    RemoveReplaced,
    /// Touch nothing: the intent stays for the sweep of its owner's next life.
    Leave,
    /// The write ends: it committed (`Some((version, created_ms, deduplicated))`) or not.
    Answer(Option<(u64, u64, bool)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writing,
    Committing,
    Fencing,
    Reading,
    Done,
}

/// One write's commit, from its written files to their end.
#[derive(Debug, Clone)]
pub struct Commit {
    state: State,
}

impl Default for Commit {
    fn default() -> Self {
        Commit::new()
    }
}

impl Commit {
    pub fn new() -> Commit {
        Commit {
            state: State::Writing,
        }
    }

    /// A write whose commit was asked already (by a request that also made its intent, as a
    /// resumable upload's commit does): only the answer is left to handle.
    pub fn committing() -> Commit {
        Commit {
            state: State::Committing,
        }
    }

    /// Whether the write has answered.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The actions `event` calls for. An event that makes no sense in the current state (a
    /// duplicate, a late answer) calls for nothing.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use Action::*;
        match (self.state, event) {
            (State::Writing, Event::Written { ok: true }) => {
                self.state = State::Committing;
                vec![CommitVersion]
            }
            (State::Writing, Event::Written { ok: false }) => {
                self.state = State::Done;
                vec![Discard, Answer(None)]
            }
            (
                State::Committing,
                Event::Committed {
                    version,
                    created_ms,
                    deduplicated,
                    replaced_damaged,
                },
            ) => {
                self.state = State::Done;
                let mut out = vec![if deduplicated { Discard } else { EndIntent }];
                if replaced_damaged {
                    out.push(RemoveReplaced);
                }
                out.push(Answer(Some((version, created_ms, deduplicated))));
                out
            }
            (State::Committing, Event::Refused) => {
                self.state = State::Done;
                vec![Discard, Answer(None)]
            }
            (State::Committing, Event::Unknown) => {
                self.state = State::Fencing;
                vec![Fence]
            }
            (State::Fencing, Event::Fenced { ok: true }) => {
                self.state = State::Reading;
                vec![ReadIntent]
            }
            (State::Fencing, Event::Fenced { ok: false }) | (State::Reading, Event::Read(None)) => {
                // Still unknown: the files stay, listed in an intent that is still this
                // process's; its sweep resolves it the same way.
                self.state = State::Done;
                vec![Leave, Answer(None)]
            }
            (State::Reading, Event::Read(Some(fate))) => {
                self.state = State::Done;
                let files = match settle(fate) {
                    Some(true) => Discard,
                    Some(false) => EndIntent,
                    None => Leave,
                };
                let answer = match fate {
                    IntentFate::Committed {
                        version,
                        created_ms,
                        adopted,
                    } => Some((version, created_ms, !adopted)),
                    _ => None,
                };
                vec![files, Answer(answer)]
            }
            _ => Vec::new(),
        }
    }
}

/// What happened to a rebuild or a move (new shard files for some positions of a content), in
/// the order it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildEvent {
    /// The intent listing the new files was recorded (`ok: false`: refused, or no answer).
    Begun { ok: bool },
    /// The new files were written and synced (`ok: false`: writing gave up).
    Written { ok: bool },
    /// `ReplaceShards` answered: the content points at the new files where their slots still
    /// held what they were made from, and the intent lists what is now garbage.
    Replaced,
    /// `ReplaceShards` refused (the intent was given up meanwhile): nothing changed.
    Refused,
    /// No answer to `ReplaceShards`: it may have landed.
    Unknown,
    /// The fence's answer (`ok: false`: no answer either).
    Fenced { ok: bool },
    /// The intent as read after the fence (`None`: no answer).
    Read(Option<IntentFate>),
}

/// What a rebuild or a move does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildAction {
    /// Record an intent listing the new files before writing any.
    BeginIntent,
    /// Write and sync the new files.
    Write,
    /// Ask the metadata store to point the content at the new files.
    Replace,
    /// Abandon the intent (only if not committed): the fence.
    Fence,
    /// Read the intent.
    ReadIntent,
    /// Delete the files the intent lists (as `ReplaceShards` answered, or as read back after
    /// the fence; never a list read before the fence: a replace that landed in between turned
    /// the new files into referenced ones), then end the intent.
    RemoveListed,
    /// The new files were never referenced: delete them, then end the intent.
    DiscardNew,
    /// The new files are referenced: end the intent.
    EndIntent,
    /// Touch nothing: the intent stays for the sweep.
    Leave,
    /// The content is whole: clear its damaged mark, if any.
    ClearDamaged,
    /// The rebuild ends: `true` if the content points at the new files.
    Finish(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RebuildState {
    Beginning,
    Writing,
    Replacing,
    Fencing,
    Reading,
    Done,
}

/// One rebuild's or move's new shard files, from their intent to their end. The store's repair
/// and move paths and the simulator's both carry out its actions.
#[derive(Debug, Clone)]
pub struct Rebuild {
    state: RebuildState,
}

impl Default for Rebuild {
    fn default() -> Self {
        Rebuild::new()
    }
}

impl Rebuild {
    /// A rebuild about to name its new files: the first action is [`RebuildAction::BeginIntent`].
    pub fn new() -> Rebuild {
        Rebuild {
            state: RebuildState::Beginning,
        }
    }

    pub fn start(&self) -> RebuildAction {
        RebuildAction::BeginIntent
    }

    pub fn done(&self) -> bool {
        self.state == RebuildState::Done
    }

    /// The actions `event` calls for; nothing for an event out of place.
    pub fn on(&mut self, event: RebuildEvent) -> Vec<RebuildAction> {
        use RebuildAction::*;
        use RebuildEvent as E;
        use RebuildState as S;
        let (next, actions) = match (self.state, event) {
            (S::Beginning, E::Begun { ok: true }) => (S::Writing, vec![Write]),
            // No file written yet: an intent that was recorded lists files that do not exist,
            // and the sweep ends it.
            (S::Beginning, E::Begun { ok: false }) => (S::Done, vec![Leave, Finish(false)]),
            (S::Writing, E::Written { ok: true }) => (S::Replacing, vec![Replace]),
            (S::Writing, E::Written { ok: false }) | (S::Replacing, E::Refused) => {
                (S::Done, vec![DiscardNew, Finish(false)])
            }
            (S::Replacing, E::Replaced) => {
                (S::Done, vec![RemoveListed, ClearDamaged, Finish(true)])
            }
            (S::Replacing, E::Unknown) => (S::Fencing, vec![Fence]),
            (S::Fencing, E::Fenced { ok: true }) => (S::Reading, vec![ReadIntent]),
            (S::Fencing, E::Fenced { ok: false }) | (S::Reading, E::Read(None)) => {
                (S::Done, vec![Leave, Finish(false)])
            }
            (S::Reading, E::Read(Some(fate))) => {
                let landed = matches!(fate, IntentFate::Committed { .. });
                let files = match settle(fate) {
                    Some(true) => RemoveListed,
                    Some(false) => EndIntent,
                    None => Leave,
                };
                let mut out = vec![files];
                if landed {
                    out.push(ClearDamaged);
                }
                out.push(Finish(landed));
                (S::Done, out)
            }
            _ => return Vec::new(),
        };
        self.state = next;
        actions
    }
}

/// What the intent sweep knows of an intent when it looks at it (made from the record by
/// `control::meta::sweep_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepSeen {
    /// The writer gave up (or was fenced): no commit can land, the files are garbage.
    Abandoned,
    /// The commit landed; `adopted` if the files hold the content. `settled` once the request
    /// that made it would have ended it itself (a grace after the commit, or at once when its
    /// process is gone).
    Committed { adopted: bool, settled: bool },
    /// Not committed yet; `writer_gone` once the writer is taken as gone (its process
    /// restarted, its node was evacuated, or the intent is older than any write lives).
    Writing { writer_gone: bool },
}

/// What happened to a sweep of one intent, in the order it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepEvent {
    /// The fence's answer (`ok: false`: refused or no answer).
    Fenced { ok: bool },
    /// The intent as read after the fence (`None`: no answer).
    Read(Option<IntentFate>),
}

/// What a sweep of one intent does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAction {
    /// Abandon the intent (only if not committed): the fence.
    Fence,
    /// Read the intent.
    ReadIntent,
    /// Delete the files the intent lists (as seen, when nothing can change it any more; else
    /// as read back after the fence, never a list read before it: a rebuild's replace that
    /// landed in between turned the files listed then into the content's shards), then end
    /// the intent once every file is gone.
    RemoveListed,
    /// The files are referenced: end the intent.
    EndIntent,
    /// Touch nothing now: a later sweep looks again.
    Leave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SweepState {
    Fencing,
    Reading,
    Done,
}

/// The sweep of one intent left by a writer, a rebuild or a collection that did not end it:
/// the periodic sweeper of every node, a dev node's start-up, and the simulator's sweeper
/// carry out its actions.
#[derive(Debug, Clone)]
pub struct Sweep {
    state: SweepState,
}

impl Sweep {
    /// The sweep of an intent seen as `seen`, and its first actions.
    pub fn start(seen: SweepSeen) -> (Sweep, Vec<SweepAction>) {
        use SweepAction::*;
        let (state, first) = match seen {
            SweepSeen::Abandoned => (SweepState::Done, RemoveListed),
            SweepSeen::Committed { settled: false, .. } => (SweepState::Done, Leave),
            SweepSeen::Committed { adopted: true, .. } => (SweepState::Done, EndIntent),
            SweepSeen::Committed { adopted: false, .. } => (SweepState::Done, RemoveListed),
            SweepSeen::Writing { writer_gone: false } => (SweepState::Done, Leave),
            // A writer taken as gone could still be alive (stopped, not dead) and its commit
            // may land first: fence, read back, and follow what the intent says then.
            SweepSeen::Writing { writer_gone: true } => (SweepState::Fencing, Fence),
        };
        (Sweep { state }, vec![first])
    }

    pub fn done(&self) -> bool {
        self.state == SweepState::Done
    }

    /// The actions `event` calls for; nothing for an event out of place.
    pub fn on(&mut self, event: SweepEvent) -> Vec<SweepAction> {
        use SweepAction::*;
        use SweepEvent as E;
        use SweepState as S;
        let (next, action) = match (self.state, event) {
            (S::Fencing, E::Fenced { ok: true }) => (S::Reading, ReadIntent),
            (S::Fencing, E::Fenced { ok: false }) | (S::Reading, E::Read(None)) => (S::Done, Leave),
            (S::Reading, E::Read(Some(fate))) => (
                S::Done,
                match settle(fate) {
                    Some(true) => RemoveListed,
                    Some(false) => EndIntent,
                    None => Leave,
                },
            ),
            _ => return Vec::new(),
        };
        self.state = next;
        vec![action]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn committed(dedup: bool, replaced: bool) -> Event {
        Event::Committed {
            version: 7,
            created_ms: 9,
            deduplicated: dedup,
            replaced_damaged: replaced,
        }
    }

    #[test]
    fn a_commit_ends_the_intent_or_discards_spare_files() {
        let mut c = Commit::new();
        assert_eq!(c.on(Event::Written { ok: true }), vec![CommitVersion]);
        assert_eq!(
            c.on(committed(false, true)),
            vec![EndIntent, RemoveReplaced, Answer(Some((7, 9, false)))]
        );
        assert!(c.done());
        // A late duplicate answer changes nothing.
        assert!(c.on(Event::Unknown).is_empty());
        let mut c = Commit::new();
        c.on(Event::Written { ok: true });
        assert_eq!(
            c.on(committed(true, false)),
            vec![Discard, Answer(Some((7, 9, true)))]
        );
    }

    #[test]
    fn failures_before_the_commit_discard() {
        let mut c = Commit::new();
        assert_eq!(
            c.on(Event::Written { ok: false }),
            vec![Discard, Answer(None)]
        );
        let mut c = Commit::new();
        c.on(Event::Written { ok: true });
        assert_eq!(c.on(Event::Refused), vec![Discard, Answer(None)]);
    }

    #[test]
    fn an_unknown_commit_never_discards_before_the_fence_says_so() {
        // Every path from an unknown commit: no Discard unless the intent was read back as
        // abandoned or as committed without adopting the files.
        for fenced in [true, false] {
            for read in [
                None,
                Some(IntentFate::Abandoned),
                Some(IntentFate::Gone),
                Some(IntentFate::Committed {
                    version: 3,
                    created_ms: 4,
                    adopted: true,
                }),
                Some(IntentFate::Committed {
                    version: 3,
                    created_ms: 4,
                    adopted: false,
                }),
            ] {
                let mut c = Commit::new();
                c.on(Event::Written { ok: true });
                let mut all = c.on(Event::Unknown);
                assert_eq!(all, vec![Fence]);
                all.extend(c.on(Event::Fenced { ok: fenced }));
                if fenced {
                    all.extend(c.on(Event::Read(read)));
                }
                assert!(c.done(), "{fenced} {read:?}");
                let discards = all.contains(&Discard);
                let may_discard = fenced
                    && matches!(
                        read,
                        Some(IntentFate::Abandoned)
                            | Some(IntentFate::Committed { adopted: false, .. })
                    );
                assert_eq!(discards, may_discard, "{fenced} {read:?}: {all:?}");
                let answered_ok = all.iter().any(|a| matches!(a, Answer(Some(_))));
                assert_eq!(
                    answered_ok,
                    fenced && matches!(read, Some(IntentFate::Committed { .. })),
                    "{all:?}"
                );
            }
        }
    }

    #[test]
    fn a_rebuild_replaces_then_removes_what_the_intent_lists() {
        use RebuildAction as A;
        use RebuildEvent as E;
        let mut r = Rebuild::new();
        assert_eq!(r.start(), A::BeginIntent);
        assert_eq!(r.on(E::Begun { ok: true }), vec![A::Write]);
        assert_eq!(r.on(E::Written { ok: true }), vec![A::Replace]);
        assert_eq!(
            r.on(E::Replaced),
            vec![A::RemoveListed, A::ClearDamaged, A::Finish(true)]
        );
        assert!(r.done());
        assert!(r.on(E::Unknown).is_empty());
        let mut r = Rebuild::new();
        r.on(E::Begun { ok: true });
        assert_eq!(
            r.on(E::Written { ok: false }),
            vec![A::DiscardNew, A::Finish(false)]
        );
        let mut r = Rebuild::new();
        assert_eq!(
            r.on(E::Begun { ok: false }),
            vec![A::Leave, A::Finish(false)]
        );
    }

    #[test]
    fn an_unknown_replace_never_deletes_new_files_on_a_guess() {
        use RebuildAction as A;
        use RebuildEvent as E;
        for fenced in [true, false] {
            for read in [
                None,
                Some(IntentFate::Abandoned),
                Some(IntentFate::Gone),
                Some(IntentFate::Committed {
                    version: 0,
                    created_ms: 0,
                    adopted: false,
                }),
            ] {
                let mut r = Rebuild::new();
                r.on(E::Begun { ok: true });
                r.on(E::Written { ok: true });
                let mut all = r.on(E::Unknown);
                assert_eq!(all, vec![A::Fence]);
                all.extend(r.on(E::Fenced { ok: fenced }));
                if fenced {
                    all.extend(r.on(E::Read(read)));
                }
                assert!(r.done());
                // The new files themselves are deleted only by name of the read-back intent.
                assert!(!all.contains(&A::DiscardNew), "{all:?}");
                let removes = all.contains(&A::RemoveListed);
                assert_eq!(
                    removes,
                    fenced
                        && matches!(
                            read,
                            Some(IntentFate::Abandoned | IntentFate::Committed { .. })
                        ),
                    "{fenced} {read:?}: {all:?}"
                );
                assert_eq!(
                    all.contains(&A::Finish(true)),
                    fenced && matches!(read, Some(IntentFate::Committed { .. }))
                );
            }
        }
    }

    #[test]
    fn a_sweep_fences_a_writer_taken_as_gone_and_follows_the_read_back() {
        use SweepAction::*;
        let (mut sw, first) = Sweep::start(SweepSeen::Writing { writer_gone: true });
        assert_eq!(first, vec![Fence]);
        assert_eq!(sw.on(SweepEvent::Fenced { ok: true }), vec![ReadIntent]);
        assert_eq!(
            sw.on(SweepEvent::Read(Some(IntentFate::Abandoned))),
            vec![RemoveListed]
        );
        assert!(sw.done());
        assert!(sw.on(SweepEvent::Fenced { ok: true }).is_empty());
        // The commit landed before the fence: the files are the content's, or spare.
        for (adopted, then) in [(true, EndIntent), (false, RemoveListed)] {
            let (mut sw, _) = Sweep::start(SweepSeen::Writing { writer_gone: true });
            sw.on(SweepEvent::Fenced { ok: true });
            let fate = IntentFate::Committed {
                version: 1,
                created_ms: 2,
                adopted,
            };
            assert_eq!(sw.on(SweepEvent::Read(Some(fate))), vec![then]);
        }
        // No answer at any point, or the intent gone: touch nothing.
        let (mut sw, _) = Sweep::start(SweepSeen::Writing { writer_gone: true });
        assert_eq!(sw.on(SweepEvent::Fenced { ok: false }), vec![Leave]);
        let (mut sw, _) = Sweep::start(SweepSeen::Writing { writer_gone: true });
        sw.on(SweepEvent::Fenced { ok: true });
        assert_eq!(sw.on(SweepEvent::Read(None)), vec![Leave]);
        let (mut sw, _) = Sweep::start(SweepSeen::Writing { writer_gone: true });
        sw.on(SweepEvent::Fenced { ok: true });
        assert_eq!(sw.on(SweepEvent::Read(Some(IntentFate::Gone))), vec![Leave]);
    }

    #[test]
    fn a_sweep_never_touches_a_live_write_or_a_fresh_commit() {
        use SweepAction::*;
        let cases = [
            (SweepSeen::Writing { writer_gone: false }, Leave),
            (
                SweepSeen::Committed {
                    adopted: false,
                    settled: false,
                },
                Leave,
            ),
            (
                SweepSeen::Committed {
                    adopted: true,
                    settled: false,
                },
                Leave,
            ),
            (
                SweepSeen::Committed {
                    adopted: true,
                    settled: true,
                },
                EndIntent,
            ),
            (
                SweepSeen::Committed {
                    adopted: false,
                    settled: true,
                },
                RemoveListed,
            ),
            (SweepSeen::Abandoned, RemoveListed),
        ];
        for (seen, then) in cases {
            let (sw, first) = Sweep::start(seen);
            assert_eq!(first, vec![then], "{seen:?}");
            assert!(sw.done());
        }
    }
}
