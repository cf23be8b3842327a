//! `periphery serve`: resolve the validated configuration against the machine and run.
//!
//! Order matters: state directory, store, identity, then the sockets (so a second daemon on
//! the same state directory fails on the store lock before touching anything), then mDNS,
//! then the console banner. SIGINT/SIGTERM close the endpoint with `ShuttingDown`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::sync::Arc;

use anyhow::Context;

use periphery_protocol::{Request, Response, Role};

use crate::admin;
use crate::appliance::{Appliance, Caller, Conversation};
use crate::config::Config;
use crate::identity::ApplianceIdentity;
use crate::store::Store;
use crate::workstations::Workstations;

/// Runs the daemon until a signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let dir = &config.state_dir.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;

    let store = Arc::new(Store::open(&dir.join("state.redb"))?);
    let identity = ApplianceIdentity::load_or_create(dir, &config.name)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Installed explicitly so that a dependency enabling another provider cannot make rustls
    // panic about an ambiguous default.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let admin_listener = admin::bind(dir).await?;
    let session_listener = admin::bind_sessions(dir).await?;
    // The endpoint needs the allow-list, the appliance needs the bound addresses: build the
    // appliance with the configured address first, then bind.
    // Workstation homes live below the state directory and belong to their own uids, which
    // must be able to traverse it (0711: traverse, not list). Private files stay 0600/0700.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot set permissions of {}", dir.display()))?;
    std::fs::set_permissions(
        dir.join("state.redb"),
        std::fs::Permissions::from_mode(0o600),
    )
    .context("cannot make the state database private")?;
    // Processes of this appliance's workstations carry this prefix in their marker.
    let instance = identity.fingerprint().trim_start_matches("sha256:")[..16].to_owned();
    let workstations = Arc::new(Workstations::new(
        store.clone(),
        dir.clone(),
        instance,
        config.workstations.clone(),
    ));
    let mut app = Appliance::new(
        config.clone(),
        store,
        identity,
        vec![config.listen],
        workstations.clone(),
    )?;
    let server_config = crate::tls::server_config(&app.identity, app.devices.clone(), provider)?;
    let endpoint = quinn::Endpoint::server(server_config, config.listen)
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let bound = endpoint.local_addr()?;
    app.listening = vec![bound];

    let first_boot_code = first_boot_admin(&app).await?;
    let app = Arc::new(app);
    // Offers and render leases lapse on time, also with nobody asking.
    {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = app.expire_offers().await {
                    tracing::warn!(error = %e, "expiring offers failed");
                }
                // Render leases of silent nodes expire on time too.
                let render = app.render.clone();
                let _ = tokio::task::spawn_blocking(move || render.tick()).await;
            }
        });
    }

    let _mdns = if config.discovery {
        match crate::discovery::announce(&config.name, bound, app.identity.fingerprint()) {
            Ok(d) => {
                *app.discovery.lock().unwrap_or_else(|p| p.into_inner()) = format!(
                    "announced as {} on {}",
                    config.name,
                    periphery_protocol::SERVICE_TYPE
                );
                Some(d)
            }
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "discovery is off");
                *app.discovery.lock().unwrap_or_else(|p| p.into_inner()) = format!("off: {e}");
                None
            }
        }
    } else {
        *app.discovery.lock().unwrap_or_else(|p| p.into_inner()) = "off (configured)".into();
        None
    };

    print_banner(&app, bound, first_boot_code.as_deref());
    tracing::info!(name = %config.name, listen = %bound, fingerprint = %app.identity.fingerprint(), "appliance ready");

    workstations.reconcile().await;
    let supervise = tokio::spawn(workstations.clone().supervise());
    // Persistence opens its repository on its own thread (a store that cannot be reached
    // is retried there), then follows the workstations' homes and the jobs' outputs.
    {
        let p = app.persistence.clone();
        std::thread::Builder::new()
            .name("persist-open".into())
            .spawn(move || p.open())
            .context("cannot start persistence")?;
        tokio::spawn(crate::appliance::follow_trees(app.clone()));
    }

    let (tx, rx) = tokio::sync::watch::channel(false);
    let quic = tokio::spawn(crate::quic::run(app.clone(), endpoint, rx.clone()));
    let admin_task = tokio::spawn(admin::run(
        app.clone(),
        admin_listener,
        admin::SocketKind::Admin,
        rx.clone(),
    ));
    let session_task = tokio::spawn(admin::run(
        app.clone(),
        session_listener,
        admin::SocketKind::Session,
        rx.clone(),
    ));
    let (local_node, status) = match crate::render::local::node_binary() {
        _ if !config.local_node => (None, "off (configured)"),
        Some(bin) => {
            let a = app.clone();
            let task = tokio::spawn(crate::render::local::run(
                bin,
                config.state_dir.join("local-node"),
                bound,
                move || a.issue_node_token(),
                rx,
            ));
            (Some(task), "on")
        }
        None => {
            tracing::warn!("no periphery-render-node next to periphery: the appliance runs no render node of its own");
            (
                None,
                "off: periphery-render-node is not installed next to periphery",
            )
        }
    };
    *app.render
        .local_node
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = status.into();

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    // The terminal going away (SIGHUP) is a shutdown too, and a clean one: workstations are
    // stopped, not orphaned.
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    tracing::info!("shutting down");
    let _ = tx.send(true);
    let _ = quic.await;
    let _ = admin_task.await;
    let _ = session_task.await;
    if let Some(l) = local_node {
        let _ = l.await;
    }
    supervise.abort();
    workstations.stop_all().await;
    Ok(())
}

/// On the first start there are no users: create `admin` (no password; it pairs with the
/// console code). Returns a pairing code for the first admin, for the console banner.
async fn first_boot_admin(app: &Appliance) -> anyhow::Result<Option<String>> {
    let mut conv = Conversation::new(Caller::LocalAdmin { uid: 0 });
    let Response::Users(users) = app.handle(&mut conv, Request::UserList).await? else {
        anyhow::bail!("unexpected answer to user-list");
    };
    let admin = match users.iter().find(|u| u.role == Role::Admin) {
        Some(a) => a.name.clone(),
        None if users.is_empty() => {
            app.handle(
                &mut conv,
                Request::UserAdd {
                    name: "admin".into(),
                    password: None,
                    role: Role::Admin,
                },
            )
            .await?;
            "admin".to_owned()
        }
        None => return Ok(None),
    };
    match app
        .handle(
            &mut conv,
            Request::PairCodeCreate {
                user: admin.clone(),
            },
        )
        .await?
    {
        Response::PairCode { code, .. } => Ok(Some(format!("{code}  (for user {admin})"))),
        _ => Ok(None),
    }
}

fn print_banner(app: &Appliance, bound: std::net::SocketAddr, code: Option<&str>) {
    let c = &app.config;
    let host = if bound.ip().is_unspecified() {
        "<this machine's address>".to_owned()
    } else {
        bound.ip().to_string()
    };
    let port_arg = if bound.port() == periphery_protocol::DEFAULT_PORT {
        String::new()
    } else {
        format!(":{}", bound.port())
    };
    println!();
    println!(
        "  Periphery appliance {}  (version {})",
        c.name,
        env!("CARGO_PKG_VERSION")
    );
    println!("  address       {bound}  (QUIC, ALPN periphery/1)");
    println!("  fingerprint   {}", app.identity.fingerprint());
    if let Some(code) = code {
        let plain = code.split_whitespace().next().unwrap_or_default();
        println!("  pairing code  {code}, valid {} s", c.code_ttl.as_secs());
        println!("  pair a tablet periphery-tablet pair {host}{port_arg} --code {plain}");
    }
    println!("  state         {}", c.state_dir.display());
    println!();
}
