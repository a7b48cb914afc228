//! The etcd backend: the [`Kv`] interface over an etcd cluster (v3 API, gRPC), so that several
//! control processes can serve one cluster's metadata, and the metadata survives the loss of a
//! minority of etcd's members.
//!
//! Each [`Kv::attempt`] is one optimistic, serializable transaction:
//! - **Reads** come from one snapshot: the first read is linearizable and fixes the snapshot's
//!   revision `R`; every later read asks for revision `R`. Each key read is remembered with the
//!   revision that last modified it (0: absent), and each range read with the span it covered
//!   and every key it saw.
//! - **Writes** are buffered (reads see them: read-your-writes, cleared ranges included) and go
//!   out at commit as one etcd `Txn` whose guards are: every key read still has the revision it
//!   was read at, and no key in a range read was modified after `R`. Any guard failing means
//!   another transaction changed what this one read: [`KvError::Conflict`], and
//!   [`ostore_control::kv::run`] runs the body again on a new snapshot.
//! - **Atomic adds** are read-modify-writes (etcd has no atomic add): the counter's key is read
//!   and so guarded like any other.
//! - **A commit whose answer is lost** (the connection or the member failed after the `Txn` was
//!   sent, or the answer took longer than [`REQUEST_TIMEOUT`]) is
//!   [`KvError::CommitUnknownResult`]: ostore's writes carry idempotency markers
//!   (`rpc::execute_idempotent`), so the retry finds the marker if the first commit happened.
//! - **Limits:** etcd refuses a `Txn` of more guards, or more writes, than its `--max-txn-ops`
//!   (each counted against it; ostore needs it raised, see KEYS.md) or larger than its
//!   `--max-request-bytes`: [`KvError::TooLarge`].
//!
//! **TLS:** given [`EtcdTls`] (`ostore control --etcd-ca --etcd-cert --etcd-key`), every member
//! is reached over TLS (`https://`), the member's certificate checked against the CA and this
//! client's certificate presented (etcd's `--client-cert-auth`); without it, plain gRPC, which
//! only loopback or a private link should carry (the CA key and the root secret are sealed in
//! the store either way, but object keys and bucket names are not).
//!
//! Every key lives under a prefix (`ostore/` unless the spec names another), so one etcd cluster
//! can hold several ostore clusters. The gRPC client runs on a small tokio runtime of its own;
//! [`Kv`] is synchronous, so each call blocks its calling thread (the control plane runs them on
//! its metadata threads, never on an executor: [`Kv::read_threads`]).

use etcd_client::{
    Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, SortOrder, SortTarget,
    Txn, TxnOp,
};
use ostore_control::kv::{body_result, BodyError, Kv, KvError, Pairs, Tx};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod local;

/// One request to etcd that has no answer after this long fails: a read is tried again (see
/// [`UNAVAILABLE_MAX`]), a commit's outcome is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read keeps trying while etcd is unreachable or has no leader (an election takes
/// about a second) before the transaction fails with a storage error.
pub const UNAVAILABLE_MAX: Duration = Duration::from_secs(5);
/// Pairs asked for per range request.
const PAGE: usize = 1000;
/// The largest answer accepted from etcd.
const ANSWER_BYTES_MAX: usize = 256 << 20;
/// Threads the control plane runs reads on (each blocks on a round trip to etcd).
const READ_THREADS: usize = 16;
/// The key prefix when the spec names none.
pub const DEFAULT_PREFIX: &str = "ostore/";

/// TLS to the members: the CA (PEM) that signed their certificates, and this client's
/// certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl EtcdTls {
    fn options(&self) -> Result<etcd_client::TlsOptions, KvError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| KvError::Storage(format!("reading {}: {e}", p.display())))
        };
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                read(&self.cert)?,
                read(&self.key)?,
            )))
    }
}

/// An etcd cluster as a [`Kv`] store.
pub struct EtcdKv {
    rt: tokio::runtime::Runtime,
    /// One client per member: requests go to the member that answered last, and move on to the
    /// next when it fails (gRPC's own balancing kept sending a share of them to a dead member,
    /// each waiting out a connection timeout).
    clients: Vec<KvClient>,
    current: AtomicUsize,
    prefix: Vec<u8>,
    endpoints: Vec<String>,
}

/// A key, its value and the revision that last modified it.
type Versioned = (Vec<u8>, Vec<u8>, i64);

/// What a failed etcd request means for the transaction.
enum Fault {
    /// The member is unreachable, has no leader, or the answer did not come in time.
    Unavailable(String),
    /// The snapshot's revision is not (or no longer) readable here: compacted, or not yet
    /// applied by the member asked.
    Revision(String),
    /// The request is over one of etcd's limits.
    TooLarge(String),
    /// Anything else: a storage error with etcd's message.
    Other(String),
}

fn fault(e: etcd_client::Error) -> Fault {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted => Fault::Unavailable(msg),
                // Overloaded: refused before anything was applied; try again.
                _ if msg.contains("too many requests") => Fault::Unavailable(msg),
                _ if msg.contains("too many operations")
                    || msg.contains("too large")
                    || s.code() == Code::ResourceExhausted && !msg.contains("space exceeded") =>
                {
                    Fault::TooLarge(msg)
                }
                _ if msg.contains("compacted") || msg.contains("future revision") => {
                    Fault::Revision(msg)
                }
                _ => Fault::Other(msg),
            }
        }
        E::TransportError(e) => Fault::Unavailable(e.to_string()),
        E::IoError(e) => Fault::Unavailable(e.to_string()),
        other => Fault::Other(other.to_string()),
    }
}

impl EtcdKv {
    /// Connects to the cluster named by `spec`: `HOST:PORT[,HOST:PORT…][/PREFIX]` (the part of
    /// `--meta etcd:…` after `etcd:`). Requests go to one member while it answers, and to the
    /// next once it fails. With `tls`, over TLS.
    pub fn open(spec: &str, tls: Option<&EtcdTls>) -> Result<Self, KvError> {
        let (hosts, prefix) = match spec.split_once('/') {
            Some((h, p)) if !p.trim_matches('/').is_empty() => {
                (h, format!("{}/", p.trim_matches('/')))
            }
            Some((h, _)) => (h, DEFAULT_PREFIX.to_string()),
            None => (spec, DEFAULT_PREFIX.to_string()),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let port_ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(KvError::Storage(format!(
                    "etcd:{spec}: {h:?} is not a member's HOST:PORT"
                )));
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            endpoints.push(format!("{scheme}://{h}"));
        }
        if endpoints.is_empty() {
            return Err(KvError::Storage(format!(
                "etcd:{spec}: name at least one member as HOST:PORT"
            )));
        }
        Self::connect_with(endpoints, prefix.into_bytes(), tls)
    }

    /// Connects to `endpoints` (URLs such as `http://127.0.0.1:2379`), keeping every key under
    /// `prefix`.
    pub fn connect(endpoints: Vec<String>, prefix: Vec<u8>) -> Result<Self, KvError> {
        Self::connect_with(endpoints, prefix, None)
    }

    /// As [`connect`](Self::connect), over TLS with `tls` (the endpoints are `https://`).
    pub fn connect_with(
        endpoints: Vec<String>,
        prefix: Vec<u8>,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, KvError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ostore-etcd")
            .enable_all()
            .build()
            .map_err(|e| KvError::Storage(format!("starting the etcd client's runtime: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(REQUEST_TIMEOUT)
            // A member that stops answering while requests wait on it is found out by their
            // timeout; pings go no more often than etcd allows by default (every 5 s, and
            // only while a request is open), which it would otherwise answer by closing the
            // connection under the requests in flight.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(2))
            .with_keep_alive_while_idle(false)
            // A member cut off from the others answers "no leader" at once instead of waiting.
            .with_require_leader(true);
        let options = match tls {
            Some(t) => options.with_tls(t.options()?),
            None => options,
        };
        let mut clients = Vec::new();
        for e in &endpoints {
            // Connections are made on first use: a member down now is no reason to fail.
            let client = rt
                .block_on(etcd_client::Client::connect([e], Some(options.clone())))
                .map_err(|err| KvError::Storage(format!("connecting to etcd {e}: {err}")))?;
            // A page of values can exceed gRPC's 4 MiB default (1000 content records with
            // inline bodies of up to 16 KiB each): accept larger answers.
            clients.push(
                client
                    .kv_client()
                    .max_decoding_message_size(ANSWER_BYTES_MAX),
            );
        }
        let kv = EtcdKv {
            current: AtomicUsize::new(rand::random::<usize>() % clients.len()),
            clients,
            rt,
            prefix,
            endpoints,
        };
        Ok(kv)
    }

    /// The member to ask now, and its client.
    fn client(&self) -> (usize, KvClient) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Member `i` failed: the next request goes to the next member (unless another thread
    /// has moved on already).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::debug!(
                "etcd member {} failed; asking {}",
                self.endpoints[i],
                self.endpoints[next]
            );
        }
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + k.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(k);
        out
    }

    /// One range request: `(key, value, mod revision)` triples, and the revision it was read at.
    fn range(
        &self,
        begin: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        reverse: bool,
        at: Option<i64>,
    ) -> Result<(Vec<Versioned>, i64), KvError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut tries = 0usize;
        // Serializable (answered by the member asked, from its own state) only at a fixed
        // revision: the first read of a transaction is linearizable.
        let mut serializable = at.is_some();
        loop {
            let mut opts = GetOptions::new().with_limit(limit.min(i64::MAX as usize) as i64);
            if let Some(end) = end {
                opts = opts.with_range(self.key(end));
            }
            if reverse {
                opts = opts.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            if let Some(r) = at {
                opts = opts.with_revision(r);
            }
            if serializable {
                opts = opts.with_serializable();
            }
            let (member, mut client) = self.client();
            let key = self.key(begin);
            let r = self.rt.block_on(async move {
                tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, Some(opts))).await
            });
            let err = match r {
                Ok(Ok(mut resp)) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    let n = self.prefix.len();
                    let out = resp
                        .take_kvs()
                        .into_iter()
                        .map(|kv| {
                            let rev = kv.mod_revision();
                            let (k, v) = kv.into_key_value();
                            (k.get(n..).unwrap_or_default().to_vec(), v, rev)
                        })
                        .collect();
                    return Ok((out, rev));
                }
                Ok(Err(e)) => fault(e),
                Err(_) => Fault::Unavailable(format!("no answer in {REQUEST_TIMEOUT:?}")),
            };
            match err {
                Fault::Revision(m) if serializable && m.contains("future") => {
                    // The member asked has not applied the snapshot's revision yet: ask
                    // linearizably, which waits for it.
                    serializable = false;
                }
                Fault::Revision(m) => {
                    // Compacted away under a long transaction: a new snapshot is needed.
                    tracing::debug!("etcd: {m}; retrying the transaction");
                    return Err(KvError::Conflict);
                }
                Fault::Unavailable(m) => {
                    if started.elapsed() >= UNAVAILABLE_MAX {
                        return Err(KvError::Storage(format!(
                            "etcd {:?} unavailable for {UNAVAILABLE_MAX:?}: {m}",
                            self.endpoints
                        )));
                    }
                    self.failed(member);
                    tries += 1;
                    // Every member asked once: they are electing a leader, or all are down.
                    // Give them a moment.
                    if tries.is_multiple_of(self.clients.len()) {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
                Fault::TooLarge(m) => return Err(KvError::TooLarge(format!("etcd: {m}"))),
                Fault::Other(m) => return Err(KvError::Storage(format!("etcd: {m}"))),
            }
        }
    }
}

/// One transaction's state: its snapshot, what it read, and what it will write.
struct EtcdTx<'a> {
    kv: &'a EtcdKv,
    write: bool,
    /// The snapshot's revision, fixed by the first read.
    rev: Option<i64>,
    /// Every key read from the snapshot, with its mod revision (0: absent).
    reads: BTreeMap<Vec<u8>, i64>,
    /// Every span a range read covered.
    spans: Vec<(Vec<u8>, Vec<u8>)>,
    /// Buffered writes: `None` deletes.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Buffered range deletions (keys written afterwards inside them are in `writes`).
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTx<'_> {
    fn in_cleared(&self, k: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= k && k < e.as_slice())
    }

    fn hidden(&self, k: &[u8]) -> bool {
        self.writes.contains_key(k) || self.in_cleared(k)
    }

    fn snapshot(
        &mut self,
        begin: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Versioned>, KvError> {
        let (pairs, rev) = self.kv.range(begin, end, limit, reverse, self.rev)?;
        if self.rev.is_none() {
            self.rev = Some(rev);
        }
        Ok(pairs)
    }

    /// The etcd `Txn` that commits this transaction, if it wrote anything.
    fn commit_txn(&self) -> Option<Txn> {
        if self.writes.is_empty() && self.cleared.is_empty() {
            return None;
        }
        let kv = self.kv;
        let mut guards: Vec<Compare> = self
            .reads
            .iter()
            .map(|(k, rev)| Compare::mod_revision(kv.key(k), CompareOp::Equal, *rev))
            .collect();
        if let Some(r) = self.rev {
            for (b, e) in &self.spans {
                guards.push(
                    Compare::mod_revision(kv.key(b), CompareOp::Less, r + 1).with_range(kv.key(e)),
                );
            }
        }
        // etcd refuses a Txn in which two operations touch the same key: the cleared ranges
        // are merged, then cut around every key written inside them.
        let mut cleared = self.cleared.clone();
        cleared.sort();
        let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (b, e) in cleared {
            match merged.last_mut() {
                Some((_, le)) if b <= *le => {
                    if e > *le {
                        *le = e;
                    }
                }
                _ => merged.push((b, e)),
            }
        }
        let mut ops = Vec::new();
        for (b, e) in merged {
            let mut start = b;
            for k in self.writes.range(start.clone()..e.clone()).map(|(k, _)| k) {
                if start < *k {
                    ops.push(TxnOp::delete(
                        kv.key(&start),
                        Some(DeleteOptions::new().with_range(kv.key(k))),
                    ));
                }
                start = k.clone();
                start.push(0);
            }
            if start < e {
                ops.push(TxnOp::delete(
                    kv.key(&start),
                    Some(DeleteOptions::new().with_range(kv.key(&e))),
                ));
            }
        }
        for (k, v) in &self.writes {
            ops.push(match v {
                Some(v) => TxnOp::put(kv.key(k), v.clone(), None),
                None => TxnOp::delete(kv.key(k), None),
            });
        }
        Some(Txn::new().when(guards).and_then(ops))
    }

    fn commit(&self) -> Result<(), KvError> {
        let Some(txn) = self.commit_txn() else {
            return Ok(());
        };
        let (member, mut client) = self.kv.client();
        let r = self
            .kv
            .rt
            .block_on(async move { tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await });
        match r {
            Ok(Ok(resp)) if resp.succeeded() => Ok(()),
            Ok(Ok(_)) => Err(KvError::Conflict),
            Ok(Err(e)) => match fault(e) {
                // Refused by etcd before anything was applied: a definite answer.
                Fault::TooLarge(m) if !m.contains("decoded message") => {
                    Err(KvError::TooLarge(format!("etcd: {m}")))
                }
                Fault::Other(m) if m.contains("space exceeded") => {
                    Err(KvError::Storage(format!("etcd: {m}")))
                }
                // Anything else (the connection failed, the member or the transport answered
                // with an error of its own) may come after the Txn was proposed: the outcome
                // is unknown, and the retry must find out (idempotency markers).
                other => {
                    let m = match other {
                        Fault::Unavailable(m)
                        | Fault::Revision(m)
                        | Fault::TooLarge(m)
                        | Fault::Other(m) => m,
                    };
                    tracing::debug!("etcd commit outcome unknown: {m}");
                    self.kv.failed(member);
                    Err(KvError::CommitUnknownResult)
                }
            },
            Err(_) => {
                self.kv.failed(member);
                Err(KvError::CommitUnknownResult)
            }
        }
    }
}

impl Tx for EtcdTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if self.in_cleared(key) {
            return Ok(None);
        }
        let mut pairs = self.snapshot(key, None, 1, false)?;
        match pairs.pop() {
            Some((k, v, rev)) if k == key => {
                self.reads.insert(k, rev);
                Ok(Some(v))
            }
            _ => {
                self.reads.insert(key.to_vec(), 0);
                Ok(None)
            }
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let own: Vec<(Vec<u8>, Vec<u8>)> = self
            .writes
            .range(begin.to_vec()..end.to_vec())
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        // The part of [begin, end) not read yet: [lo, hi).
        let (mut lo, mut hi) = (begin.to_vec(), end.to_vec());
        let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let want = limit
                .saturating_sub(seen.len())
                .saturating_add(own.len())
                .clamp(1, PAGE);
            let page = self.snapshot(&lo, Some(&hi), want, reverse)?;
            let done = page.len() < want;
            let last = page.last().map(|p| p.0.clone());
            for (k, v, rev) in page {
                if !self.hidden(&k) {
                    seen.push((k.clone(), v));
                }
                self.reads.insert(k, rev);
            }
            // The span this page covered, and what remains.
            let covered = match (done, last) {
                (true, _) | (_, None) => (lo.clone(), hi.clone()),
                (false, Some(last)) if reverse => {
                    let c = (last.clone(), hi.clone());
                    hi = last;
                    c
                }
                (false, Some(mut last)) => {
                    last.push(0);
                    let c = (lo.clone(), last.clone());
                    lo = last;
                    c
                }
            };
            self.spans.push(covered);
            let finished = done || lo >= hi;
            // Own writes count only inside what has been read so far.
            let inside = |k: &[u8]| {
                finished
                    || if reverse {
                        k >= hi.as_slice()
                    } else {
                        k < lo.as_slice()
                    }
            };
            let have = seen.len() + own.iter().filter(|(k, _)| inside(k)).count();
            if finished || have >= limit {
                let mut all: BTreeMap<Vec<u8>, Vec<u8>> = seen.into_iter().collect();
                for (k, v) in own.iter().filter(|(k, _)| inside(k)) {
                    all.insert(k.clone(), v.clone());
                }
                let out: Pairs = if reverse {
                    all.into_iter().rev().take(limit).collect()
                } else {
                    all.into_iter().take(limit).collect()
                };
                return Ok(out);
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        if begin >= end {
            return Ok(());
        }
        let inside: Vec<Vec<u8>> = self
            .writes
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in inside {
            self.writes.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
        Ok(())
    }
}

impl Kv for EtcdKv {
    fn attempt(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        let mut tx = EtcdTx {
            kv: self,
            write,
            rev: None,
            reads: BTreeMap::new(),
            spans: Vec::new(),
            writes: BTreeMap::new(),
            cleared: Vec::new(),
        };
        match body(&mut tx) {
            Ok(()) if write => {
                let r = tx.commit();
                if r == Err(KvError::Conflict) {
                    // Another writer won; give it time to finish before running again.
                    std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 2_000));
                }
                r
            }
            other => body_result(other),
        }
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }

    fn read_threads(&self) -> usize {
        READ_THREADS
    }
}
