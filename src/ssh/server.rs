//! Placeholder listener.
use crate::app::App;

/// The SSH listener.
pub struct Server {
    listener: tokio::net::TcpListener,
    _app: App,
}

impl Server {
    /// Binds the configured address.
    pub async fn bind(app: App) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind(app.config.ssh.listen).await?;
        Ok(Server { listener, _app: app })
    }
    /// Bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound")
    }
    /// Serves.
    pub async fn run(self) -> anyhow::Result<()> {
        std::future::pending().await
    }
}
