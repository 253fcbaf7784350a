//! kiln-server is the HTTP face of kiln: the public REST API (applications,
//! versions, builds, the channels that deploy them, artifacts by content
//! address, channels as an OCI registry), the private API workers use to
//! claim builds and report results, health and metrics, the web page at
//! `/` (embedded from the repository's `web/`), and the housekeeping of the
//! build queue (re-queuing builds whose worker went silent, sweeping
//! orphaned blobs). It stores through
//! kiln-store and never runs a build itself.
//!
//! Layout:
//! - [`config`]: what an operator can set.
//! - [`artifacts`]: the signed `.cwasm`s the server precompiles.
//! - [`auth`]: owner, worker and edge tokens.
//! - [`error`]: the one error type and its JSON body.
//! - [`routes`]: one module per resource; handlers extract, call and answer.
//! - [`service`]: the use-cases the handlers call (an upload, a worker's
//!   report) and the queue's housekeeping (expired leases, orphaned blobs).
//! - [`upload`]: bounded multipart reading.
//! - [`live`]: the live logs of running builds, shared by their readers.
//! - [`oci`]: modules as OCI images, for the registry at `/v2/`.
//! - [`metrics`]: Prometheus counters.
//! - [`openapi`]: the generated API description.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod live;
pub mod metrics;
pub mod oci;
pub mod openapi;
pub mod routes;
pub mod service;
pub mod upload;

pub use config::ServerConfig;

use kiln_store::{BlobStore, MetaStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Metadata rows: owners, tokens, applications, builds, versions, channels.
    pub meta: MetaStore,
    /// Blobs by key: sources, modules, logs and signed artifacts.
    pub blobs: BlobStore,
    /// The operator's settings, fixed for the server's life.
    pub config: Arc<ServerConfig>,
    /// Woken whenever a build is queued, so long-polling claims answer at once.
    pub queue_signal: Arc<Notify>,
    /// Woken whenever a channel changes, so long-polling edge agents answer at once.
    pub channel_signal: Arc<Notify>,
    /// The Prometheus metrics served at `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Where `POST /version/{id}/try` runs plugins.
    pub trials: Arc<kiln_trial::Trials>,
    /// Precompiles and signs the `.cwasm` of each succeeded build.
    pub artifacts: Arc<artifacts::Precompiler>,
    /// The live logs of running builds, one buffer per build.
    pub live: Arc<live::LiveLogs>,
    /// Builds whose report this server is storing right now: a second
    /// report of the same build waits its turn instead of overwriting
    /// the blobs the first is writing.
    pub reporting: Arc<routes::internal::Reporting>,
    /// The OCI images of the modules the registry served last.
    pub images: Arc<oci::ImageCache>,
}

impl AppState {
    /// A state that runs no trials and signs with `artifacts`.
    pub fn new(
        meta: MetaStore,
        blobs: BlobStore,
        config: ServerConfig,
        artifacts: artifacts::Precompiler,
    ) -> Self {
        let live = live::LiveLogs::new(config.max_report_log_bytes as usize);
        Self {
            meta,
            blobs,
            live: Arc::new(live),
            config: Arc::new(config),
            queue_signal: Arc::new(Notify::new()),
            channel_signal: Arc::new(Notify::new()),
            metrics: Arc::new(metrics::Metrics::new()),
            trials: Arc::new(kiln_trial::Trials::unavailable(
                "no sandbox was configured".into(),
            )),
            artifacts: Arc::new(artifacts),
            reporting: Arc::default(),
            images: Arc::new(oci::ImageCache::default()),
        }
    }
}

/// The whole HTTP API, for `Server` and for `oneshot` tests.
pub fn router(state: AppState) -> axum::Router {
    routes::router(state)
}

/// A bound server: the address is known before it runs, so callers (and
/// tests binding port 0) can print or use it.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `addr`; port 0 takes a free port, which [`Server::local_addr`]
    /// tells.
    pub async fn bind(addr: SocketAddr, state: AppState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, state })
    }

    /// The address bound, with the port the system chose for port 0.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains requests in flight.
    /// Runs the lease reaper and the orphaned-blob sweeper alongside.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let reaper = tokio::spawn(service::housekeeping::reap_forever(self.state.clone()));
        let sweeper = tokio::spawn(service::housekeeping::sweep_forever(self.state.clone()));
        let live = self.state.live.clone();
        let app = router(self.state);
        // Followers of a live log end first, so draining does not wait on them.
        let shutdown = async move {
            shutdown.await;
            live.close();
        };
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        reaper.abort();
        sweeper.abort();
        served
    }
}
