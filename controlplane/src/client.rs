//! How a data node reaches the control plane: in-process for `ostore dev` (the embedded store),
//! or over HTTP to `ostore control` for a cluster node. Both run the same
//! [`ostore_control::rpc::Request`]s through the same `rpc::execute`.
//!
//! The remote client keeps a few idle keep-alive connections per executor (thread-local, since
//! connections belong to one executor's reactor) and never blocks the executor.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ostore_control::meta::MetaError;
use ostore_control::rpc::{self, ask, Ask, Request};
use ostore_control::service::Meta;
use ostore_server::compat::HyperIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

/// Idle connections kept per executor.
const IDLE_CONNECTIONS_MAX: usize = 16;
/// A control-plane call that takes longer than this fails (and the request with it).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum MetaClient {
    Local(Meta),
    Remote(RemoteMeta),
}

impl MetaClient {
    /// Runs `req` and returns its answer, of the type the request names (`rpc::Ask`).
    pub async fn ask<A: Ask>(&self, req: A) -> Result<A::Answer, MetaError> {
        self.call(req.into()).await
    }

    /// Runs `req`; `T` is the return type named on the request's variant.
    async fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, MetaError> {
        let bytes = match self {
            MetaClient::Local(m) => {
                let read = !req.is_write();
                let r = m.call(req).await;
                // A local read runs on this executor's thread without yielding: a loop of them
                // (a GC or scrub pass paging through every content) would hold the executor,
                // and every connection it serves, for the whole scan. Yield once the task's
                // time slice is used up, so a scan costs clients one page at a time.
                if read {
                    glommio::yield_if_needed().await;
                }
                r?
            }
            MetaClient::Remote(r) => return r.call(req).await,
        };
        rpc::decode_value(&bytes)
    }
}

impl MetaClient {
    /// Runs a whole repair scan (`Request::RepairScan`, page by page over every content);
    /// returns how many objects were queued.
    pub async fn repair_scan(&self) -> Result<u64, MetaError> {
        let mut after = None;
        let mut total = 0;
        loop {
            let (queued, next): (u64, Option<[u8; 32]>) = self
                .ask(ask::RepairScan {
                    after,
                    nonce: rand::random(),
                })
                .await?;
            total += queued;
            match next {
                Some(n) => after = Some(n),
                None => return Ok(total),
            }
        }
    }

    /// Queues every content with a shard on `drive` for repair, a page at a time; returns how
    /// many shards were queued.
    pub async fn queue_drive_for_repair(&self, drive: u16) -> Result<usize, MetaError> {
        self.queue_drive(drive, false, usize::MAX, None).await
    }

    /// Queues up to `limit` contents with a shard on `drive` to have shards moved (copied, not
    /// rebuilt), starting after `from` in hash order and wrapping around; returns how many
    /// were queued.
    pub async fn queue_drive_for_move(
        &self,
        drive: u16,
        limit: usize,
        from: Option<[u8; 32]>,
    ) -> Result<usize, MetaError> {
        self.queue_drive(drive, true, limit, from).await
    }

    async fn queue_drive(
        &self,
        drive: u16,
        moving: bool,
        limit: usize,
        from: Option<[u8; 32]>,
    ) -> Result<usize, MetaError> {
        let start = from.map(|h| (h, 0u8));
        let mut after = start;
        let mut wrapped = false;
        let mut queued = 0;
        while queued < limit {
            let page: Vec<([u8; 32], u8)> = self
                .ask(ask::ShardsOnDrive {
                    drive,
                    after,
                    limit: 1000.min(limit - queued),
                })
                .await?;
            // Past the start again after wrapping: every shard was seen.
            let page: Vec<([u8; 32], u8)> = match (wrapped, start) {
                (true, Some(s)) => page.into_iter().take_while(|p| *p <= s).collect(),
                _ => page,
            };
            let Some(last) = page.last().copied() else {
                if start.is_some() && !wrapped {
                    wrapped = true;
                    after = None;
                    continue;
                }
                return Ok(queued);
            };
            queued += page.len();
            let contents = page.iter().map(|p| p.0).collect();
            let nonce = rand::random();
            if moving {
                self.ask(ask::QueueMove { contents, nonce }).await?;
            } else {
                self.ask(ask::QueueRepair { contents, nonce }).await?;
            }
            after = Some(last);
        }
        Ok(queued)
    }
}

/// The control plane at `addr`, called with the cluster secret.
#[derive(Clone)]
pub struct RemoteMeta {
    pub addr: SocketAddr,
    pub secret: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

thread_local! {
    static IDLE: RefCell<Vec<(SocketAddr, Sender, std::time::Instant)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection older than this is not reused: the control plane closes connections idle
/// for its `--idle-timeout` (60 s by default), and one closing while a request goes out would
/// fail that request.
const IDLE_REUSE_MAX: std::time::Duration = std::time::Duration::from_secs(20);

fn unavailable(e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

impl RemoteMeta {
    async fn connect(&self) -> Result<Sender, MetaError> {
        let stream = glommio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| unavailable(format!("connecting to {}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(HyperIo(stream))
            .await
            .map_err(unavailable)?;
        glommio::spawn_local(async move {
            let _ = conn.await;
        })
        .detach();
        Ok(sender)
    }

    fn idle(&self) -> Option<Sender> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            while let Some(i) = idle.iter().position(|(a, _, _)| *a == self.addr) {
                let (_, s, since) = idle.swap_remove(i);
                if !s.is_closed() && since.elapsed() < IDLE_REUSE_MAX {
                    return Some(s);
                }
            }
            None
        })
    }

    pub async fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, MetaError> {
        // A retry of this call (none yet) must carry the same token.
        let token = rpc::Token::new(rand::random(), ostore_control::service::now_ms());
        let body = Bytes::from(rpc::encode_request(&token, &req));
        let attempt = async {
            // An idle connection the control plane has closed fails before sending anything;
            // then a fresh one is used.
            let mut sender = match self.idle() {
                Some(s) => s,
                None => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                sender = self.connect().await?;
                sender.ready().await.map_err(unavailable)?;
            }
            let request = http::Request::post("/v1/rpc")
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.secret),
                )
                .header(http::header::CONTENT_TYPE, "application/x-ostore-rpc")
                .body(Full::new(body))
                .map_err(unavailable)?;
            let resp = sender.send_request(request).await.map_err(unavailable)?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(unavailable)?
                .to_bytes();
            if !status.is_success() {
                return Err(unavailable(format!(
                    "control plane answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                if idle.len() < IDLE_CONNECTIONS_MAX {
                    idle.push((self.addr, sender, std::time::Instant::now()));
                }
            });
            rpc::decode_answer(&bytes)
        };
        futures_lite::future::or(attempt, async {
            glommio::timer::sleep(CALL_TIMEOUT).await;
            Err(unavailable(format!(
                "no answer from the control plane at {} in {CALL_TIMEOUT:?}",
                self.addr
            )))
        })
        .await
    }
}
