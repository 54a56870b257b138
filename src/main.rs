//! The one `outpost` binary. Thin on purpose: parse arguments, set up logging, load config, call a
//! library's `run`. Every role's logic lives in its crate.

#![deny(unsafe_code)]

mod footprint;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use outpost_shared::config::{ConfigError, EXIT_CONFIG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Outpost: sensorhub, connector and cloud in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on this machine: cloud, connector, a sensorhub and simulated relay cards.
    Up {
        /// Where all roles keep their data.
        #[arg(long, default_value = "outpost-data")]
        data_dir: PathBuf,
        /// Port of the cloud (dashboard and API) on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Port of the connector's LAN API on 127.0.0.1 (default: the cloud's port + 1).
        #[arg(long)]
        connector_port: Option<u16>,
    },
    /// Run the cloud: ingest, storage, API and dashboard.
    Cloud {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a sensorhub: sample this machine and send the readings on.
    Sensorhub {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a connector: the LAN side for hubs, store-and-forward to the cloud.
    Connector {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Switch a Conrad relay card like the classic `relais` tool: -stat, -on, -off, -sN, -rN,
    /// --port PATH, --card N. Prints `OK: <state>` or `FAIL: <code> <address> <data>`.
    #[command(disable_help_flag = true)]
    Relay {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Simulate N cascaded relay cards on a pseudo-terminal and print its device path (Linux and
    /// other Unix systems only: Windows has no pseudo-terminals).
    RelaySim {
        #[arg(long, default_value_t = 1)]
        cards: u8,
        /// Also make this symlink to the device (a stable path for configs).
        #[arg(long)]
        link: Option<PathBuf>,
    },
    /// Seal a secret (a sensor or mail password) to one machine's key, for a local config file.
    /// Only that machine can read it; the sealed text is safe to store and copy.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Print the current code of a mail command sender (TOTP: 6 digits, 30 s steps), to put at the
    /// end of a command mail's subject; or make a new sender secret with `--new`.
    MailCode {
        /// The sender's base32 secret, as in `[[mail_commands.sender]] secret` (read from standard
        /// input when not given, which keeps it out of the shell history).
        #[arg(long, conflicts_with = "new")]
        secret: Option<String>,
        /// Print a new random secret and an otpauth:// URI for authenticator apps.
        #[arg(long)]
        new: bool,
        /// The sender's address, shown as the account in the URI.
        #[arg(long, requires = "new")]
        account: Option<String>,
    },
    /// Make a role a systemd (Linux) or Windows service, or upgrade it in place.
    Install(outpost_installer::InstallArgs),
    /// Stop and remove a role's service (config and data stay unless --purge).
    Uninstall(outpost_installer::UninstallArgs),
    /// Whether the services run, and how hubs and connectors upload.
    Status(outpost_installer::StatusArgs),
    /// Print the default configuration of a role, or check a config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Make or list one-time enrollment tokens through the running cloud (on the cloud's host).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Make and list the people who sign in to the running cloud (on the cloud's host).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Make customers (who hold networks, and so machines) on the running cloud (on its host).
    Customer {
        #[command(subcommand)]
        action: CustomerAction,
    },
    /// Show what a stopped hub's or connector's buffer holds (it must not be running: the buffer
    /// is locked); for a connector also its quarantine (batches the cloud refused for good).
    Buffer {
        #[arg(long)]
        data_dir: PathBuf,
        /// List the quarantined readings (refused for good by the next hop, or unreadable), one
        /// JSON object a line: seq, reason, and the reading.
        #[arg(long)]
        quarantine: bool,
        /// Put every quarantined reading back into the send queue, under its own seq (after the
        /// cause was fixed, e.g. the clock). The quarantined count stays: it records a loss.
        #[arg(long, conflicts_with = "quarantine")]
        requeue: bool,
        /// Connector only: move every quarantined batch back into the buffer, to be forwarded
        /// again at the next start (once the cause is fixed).
        #[arg(long)]
        resend_quarantine: bool,
    },
    /// Run a role as a Windows service; only the Service Control Manager starts this (the
    /// service `outpost install` registers runs `outpost service --role R --config FILE`).
    #[cfg(windows)]
    #[command(hide = true)]
    Service(outpost_installer::args::ServiceArgs),
}

#[derive(Subcommand)]
enum SecretAction {
    /// Print the sealed form of VALUE (read from standard input when not given).
    Seal {
        /// The data directory of the machine's role (holds machine.key).
        #[arg(long, conflicts_with = "public_key")]
        data_dir: Option<PathBuf>,
        /// The machine's public key (PEM), e.g. when sealing on another machine.
        #[arg(long)]
        public_key: Option<PathBuf>,
        value: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Make a user. The password is read from the terminal (not echoed), or with
    /// `--password-stdin` from the first line of standard input.
    Add {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Sign-in name.
        name: String,
        /// A site-wide owner: manages everything.
        #[arg(long)]
        owner: bool,
        /// A role in a customer, CUSTOMER:ROLE (viewer, operator or admin; `*` for every
        /// customer); may be given several times.
        #[arg(long = "grant", value_parser = parse_grant)]
        grants: Vec<outpost_cloud::store::people::Grant>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users with their grants.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Give a user a role in a customer (CUSTOMER:ROLE), or take it away (CUSTOMER:none).
    Grant {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
        grant: String,
    },
}

#[derive(Subcommand)]
enum CustomerAction {
    /// Make a customer; its machines are those of the networks it holds.
    Add {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Short id: letters, digits, `.-_@`.
        id: String,
        /// A name for people (defaults to the id).
        #[arg(long)]
        name: Option<String>,
        /// A network (as enrollment tokens name it) the customer holds; may be repeated.
        #[arg(long = "network")]
        networks: Vec<String>,
    },
}

/// `CUSTOMER:ROLE` of `outpost user add --grant`.
fn parse_grant(s: &str) -> Result<outpost_cloud::store::people::Grant, String> {
    let (customer, role) = s.rsplit_once(':').ok_or("give CUSTOMER:ROLE, e.g. acme:operator")?;
    let role = parse_role(role)?.ok_or("a grant needs a role: viewer, operator or admin")?;
    Ok(outpost_cloud::store::people::Grant { customer: customer.into(), role })
}

fn parse_role(s: &str) -> Result<Option<outpost_cloud::store::people::Role>, String> {
    use outpost_cloud::store::people::Role;
    match s {
        "viewer" => Ok(Some(Role::Viewer)),
        "operator" => Ok(Some(Role::Operator)),
        "admin" => Ok(Some(Role::Admin)),
        "none" => Ok(None),
        other => {
            Err(format!("unknown role `{other}`; use viewer, operator, admin (or none to take it away)"))
        }
    }
}

/// A new password from the terminal (asked twice, not echoed) or the first line of stdin.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("Password: ")
        .context("cannot read a password from the terminal; use --password-stdin in scripts")?;
    let again = rpassword::prompt_password("Again: ").context("cannot read the password again")?;
    anyhow::ensure!(first == again, "the two passwords differ; nothing was changed");
    Ok(first)
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a new token for one machine: give it to `outpost install --enroll-token` or put it in
    /// the machine's `enroll_token`. It works once, until it expires.
    Create {
        /// The cloud's config file (the same one `outpost cloud` runs with; defaults otherwise).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The network the machine joins (a connector and its hubs share one).
        #[arg(long, default_value = "default")]
        network: String,
        /// The role the machine enrolls in: a connector token must be asked for by name, since
        /// every hub of the network trusts a connector.
        #[arg(long, value_enum, default_value = "sensorhub")]
        role: MachineRole,
        /// How long the token stays valid, e.g. "1h", "7d" (at most 30 days).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// A name to tell the token apart in `outpost token list` and on the dashboard.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List the tokens not used yet and not expired (id, network, role, expiry, label; the cloud
    /// keeps no secret).
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Cancel an open token by the id `list` shows.
    Cancel {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
}

/// The roles a machine enrolls in.
#[derive(Clone, Copy, ValueEnum)]
enum MachineRole {
    Sensorhub,
    Connector,
}

impl From<MachineRole> for outpost_shared::model::Role {
    fn from(r: MachineRole) -> Self {
        match r {
            MachineRole::Sensorhub => outpost_shared::model::Role::Sensorhub,
            MachineRole::Connector => outpost_shared::model::Role::Connector,
        }
    }
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the default configuration.
    Default {
        #[arg(long, value_enum, default_value = "sensorhub")]
        role: Role,
    },
    /// Validate a config file; exit 64 naming file, line and key of every problem.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "sensorhub")]
        role: Role,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Sensorhub,
    Connector,
    Cloud,
}

fn default_config(role: Role) -> &'static str {
    match role {
        Role::Sensorhub => outpost_sensorhub::config::DEFAULT_CONFIG,
        Role::Connector => outpost_connector::config::DEFAULT_CONFIG,
        Role::Cloud => outpost_cloud::config::DEFAULT_CONFIG,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One-shot tools print their result on stdout; only problems belong on stderr.
    let quiet = matches!(
        cli.command,
        Command::Relay { .. }
            | Command::Config { .. }
            | Command::Buffer { .. }
            | Command::Token { .. }
            | Command::User { .. }
            | Command::Customer { .. }
            | Command::MailCode { .. }
    );
    let default_filter = if quiet { "warn" } else { "info,sled=warn" };
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let stderr_log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        );
    let log = tracing_subscriber::registry().with(stderr_log);
    // A service's stderr goes nowhere: its warnings, errors, start and stop go to the event log
    // too, whatever RUST_LOG says (that is for the stderr log).
    #[cfg(windows)]
    let log = log.with(match &cli.command {
        Command::Service(args) => Some(
            outpost_installer::eventlog::EventLogLayer::new(args.role.as_str())
                .with_filter(outpost_installer::eventlog::EventLogLayer::filter()),
        ),
        _ => None,
    });
    log.init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("{ce}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Runs a role the way a service manager expects: ready once started, a watchdog heartbeat while
/// the runtime is healthy, "stopping" on the way out. Outside systemd these do nothing.
async fn as_service<E>(role: impl std::future::Future<Output = Result<(), E>>) -> Result<(), E> {
    let watchdog = outpost_installer::sdnotify::spawn_watchdog();
    outpost_installer::sdnotify::notify_ready();
    let r = role.await;
    outpost_installer::sdnotify::notify_stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    r
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// How often the cloud and the connector hand their heap's free pages back (see `footprint`).
const SERVER_HEAP_TRIM: std::time::Duration = std::time::Duration::from_secs(2);

/// When a hub hands its start-up code back to the kernel (see `footprint`).
const HUB_CODE_RELEASES: [std::time::Duration; 2] =
    [std::time::Duration::from_secs(30), std::time::Duration::from_secs(120)];

/// How long the hub's runtime may make no progress at all before the process exits: longer than
/// any deadline inside it (a stalled flush or append is noticed after 60 s), so it only fires when
/// those cannot.
const HUB_STALL_EXIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A role's config, loaded and validated: what is left to do cannot fail for a bad file.
/// Boxed: the configs are large and differ in size, and one is moved into a service closure.
enum RoleConfig {
    Cloud(Box<outpost_cloud::CloudConfig>),
    Sensorhub(Box<outpost_sensorhub::HubConfig>),
    Connector(Box<outpost_connector::ConnectorConfig>),
}

fn load_role(role: Role, path: Option<PathBuf>) -> Result<RoleConfig, ConfigError> {
    Ok(match role {
        Role::Cloud => RoleConfig::Cloud(Box::new(load(path.as_deref())?)),
        Role::Sensorhub => {
            let mut config: outpost_sensorhub::HubConfig = load(path.as_deref())?;
            config.config_path = path;
            RoleConfig::Sensorhub(Box::new(config))
        }
        Role::Connector => RoleConfig::Connector(Box::new(load(path.as_deref())?)),
    })
}

/// Runs a role until `shutdown` completes, on the command line and under a service manager alike.
fn run_role(config: RoleConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<ExitCode> {
    match config {
        RoleConfig::Cloud(config) => {
            footprint::server_heap();
            footprint::trim_heap_every(SERVER_HEAP_TRIM);
            runtime()?.block_on(as_service(outpost_cloud::run(*config, shutdown)))?;
        }
        RoleConfig::Sensorhub(config) => {
            footprint::small_heap();
            // At 30 s sensors, uplink and command channel have all run once; the second release
            // catches start-up code that still ran after the first.
            footprint::release_startup_code_at(&HUB_CODE_RELEASES);
            let rt = outpost_sensorhub::runtime().context("cannot start the async runtime")?;
            // A hub stuck for good (its runtime thread waiting on a stalled disk) exits to be restarted.
            outpost_sensorhub::watchdog::spawn(rt.handle(), HUB_STALL_EXIT, || {
                tracing::error!(
                    "the sensorhub's runtime made no progress for {} s; exiting to be restarted",
                    HUB_STALL_EXIT.as_secs()
                );
                std::process::exit(1);
            });
            if let Err(e) = rt.block_on(as_service(outpost_sensorhub::run(*config, shutdown))) {
                // Not through the runtime's drop: it would wait for blocking threads that a stalled
                // disk holds forever. The service manager restarts the hub.
                tracing::error!("the sensorhub stopped: {e}");
                std::process::exit(1);
            }
        }
        RoleConfig::Connector(config) => {
            footprint::server_heap();
            footprint::trim_heap_every(SERVER_HEAP_TRIM);
            runtime()?.block_on(as_service(outpost_connector::run(*config, shutdown)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `outpost service`: the config is checked first, so a bad file fails here, by hand, with exit
/// 64; the role then runs until the Service Control Manager asks it to stop.
#[cfg(windows)]
fn windows_service(args: outpost_installer::args::ServiceArgs) -> anyhow::Result<ExitCode> {
    let role = match args.role {
        outpost_installer::Role::Sensorhub => Role::Sensorhub,
        outpost_installer::Role::Connector => Role::Connector,
        outpost_installer::Role::Cloud => Role::Cloud,
    };
    // The service's stderr goes nowhere: what stops it must reach the event log (through tracing).
    let config = load_role(role, Some(args.config)).inspect_err(|e| {
        tracing::error!(
            target: outpost_installer::eventlog::SERVICE_TARGET,
            "the service cannot start: {e}"
        )
    })?;
    outpost_installer::windows::run_service(
        args.role,
        Box::new(move |stop| {
            run_role(config, stop.cancelled_owned()).map(drop).map_err(|e| format!("{e:#}"))
        }),
    )
    .inspect_err(|e| tracing::error!(target: outpost_installer::eventlog::SERVICE_TARGET, "{e}"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn relay_sim(cards: u8, link: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let sim = outpost_sensorhub::relay::run_simulator(cards, link)?;
        println!("{}", sim.path().display());
        stop_signal().await;
        drop(sim);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(unix))]
fn relay_sim(_cards: u8, _link: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    eprintln!(
        "outpost relay-sim: not available on Windows: the simulated cards need a pseudo-terminal. \
         Run `outpost relay-sim` on a Linux machine, or use a real card on a COM port"
    );
    Ok(exit(EXIT_CONFIG))
}

fn load<T: serde::de::DeserializeOwned + outpost_shared::config::Validate + Default>(
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    match path {
        Some(p) => outpost_shared::config::load(p),
        None => Ok(T::default()),
    }
}

/// Completes on Ctrl-C or SIGTERM (how systemd and `kill` ask a service to stop).
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("stopping");
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config { action: ConfigAction::Default { role } } => {
            print!("{}", default_config(role));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { action: ConfigAction::Check { file, role } } => {
            match role {
                Role::Sensorhub => {
                    outpost_shared::config::load::<outpost_sensorhub::HubConfig>(&file)?;
                }
                Role::Connector => {
                    outpost_shared::config::load::<outpost_connector::ConnectorConfig>(&file)?;
                }
                Role::Cloud => {
                    outpost_shared::config::load::<outpost_cloud::CloudConfig>(&file)?;
                }
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cloud { config } => run_role(load_role(Role::Cloud, config)?, stop_signal()),
        Command::Sensorhub { config } => run_role(load_role(Role::Sensorhub, config)?, stop_signal()),
        Command::Connector { config } => run_role(load_role(Role::Connector, config)?, stop_signal()),
        #[cfg(windows)]
        Command::Service(args) => windows_service(args),
        Command::Relay { args } => Ok(exit(outpost_sensorhub::relay::relay_cli(&args))),
        Command::RelaySim { cards, link } => relay_sim(cards, link),
        Command::Secret { action: SecretAction::Seal { data_dir, public_key, value } } => {
            let key = match (data_dir, public_key) {
                (Some(dir), None) => {
                    let path = dir.join(outpost_sensorhub::trust::KEY_FILE);
                    outpost_shared::keys::KeyPair::load(&path)
                        .with_context(|| format!("cannot read the machine key {}", path.display()))?
                        .public()
                        .clone()
                }
                (None, Some(pem)) => {
                    let text = std::fs::read_to_string(&pem)
                        .with_context(|| format!("cannot read {}", pem.display()))?;
                    outpost_shared::keys::PublicKey::from_pem(&text)?
                }
                _ => {
                    eprintln!(
                        "outpost secret seal: give --data-dir DIR (of the machine) or --public-key FILE"
                    );
                    return Ok(exit(EXIT_CONFIG));
                }
            };
            let value = match value {
                Some(v) => v,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            println!("{}", outpost_shared::keys::seal(&key, &value)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::MailCode { secret, new, account } => {
            use outpost_connector::mail::gateway::totp;
            if new {
                let secret = totp::new_secret();
                let account = account.unwrap_or_else(|| "sender".into());
                println!("{secret}");
                println!("otpauth://totp/Outpost:{account}?secret={secret}&issuer=Outpost&algorithm=SHA1&digits=6&period=30");
                return Ok(ExitCode::SUCCESS);
            }
            let secret = match secret {
                Some(s) => s,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim().to_string()
                }
            };
            let bytes = match totp::decode_secret(&secret) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("outpost mail-code: the secret is {e}");
                    return Ok(exit(EXIT_CONFIG));
                }
            };
            let now = chrono::Utc::now().timestamp().max(0) as u64;
            println!("{}", totp::code_at(&bytes, now));
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(args) => {
            let defaults = |r: outpost_installer::Role| {
                Ok(default_config(match r {
                    outpost_installer::Role::Sensorhub => Role::Sensorhub,
                    outpost_installer::Role::Connector => Role::Connector,
                    outpost_installer::Role::Cloud => Role::Cloud,
                })
                .to_string())
            };
            match outpost_installer::run_install(&args, &defaults) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("outpost install: {e}");
                    Ok(exit(e.exit_code()))
                }
            }
        }
        Command::Uninstall(args) => match outpost_installer::run_uninstall(&args) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("outpost uninstall: {e}");
                Ok(exit(e.exit_code()))
            }
        },
        Command::Status(args) => match outpost_installer::run_status(&args) {
            Ok(code) => Ok(exit(code)),
            Err(e) => {
                eprintln!("outpost status: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Token { action } => {
            let config = match &action {
                TokenAction::Create { config, .. }
                | TokenAction::List { config }
                | TokenAction::Cancel { config, .. } => config.clone(),
            };
            let config: outpost_cloud::CloudConfig = load(config.as_deref())?;
            let client = outpost_cloud::admin::AdminClient::from_config(&config)?;
            runtime()?.block_on(async {
                match action {
                    TokenAction::Create { network, role, ttl, label, .. } => {
                        let t = client.new_token(&network, role.into(), ttl, &label).await?;
                        println!("{}", t["token"].as_str().unwrap_or_default());
                        eprintln!(
                            "{} token {} for network {network}, valid until {}",
                            t["role"].as_str().unwrap_or("?"),
                            t["id"].as_str().unwrap_or("?"),
                            t["expires_at"].as_str().unwrap_or("?")
                        );
                    }
                    TokenAction::List { .. } => {
                        for t in client.open_tokens().await?.as_array().into_iter().flatten() {
                            println!(
                                "{}\t{}\t{}\t{}\t{}",
                                t["id"].as_str().unwrap_or_default(),
                                t["network"].as_str().unwrap_or_default(),
                                t["role"].as_str().unwrap_or_default(),
                                t["expires_at"].as_str().unwrap_or_default(),
                                t["label"].as_str().unwrap_or_default()
                            );
                        }
                    }
                    TokenAction::Cancel { id, .. } => {
                        client.cancel_token(&id).await?;
                        eprintln!("token {id} cancelled");
                    }
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::User { action } => {
            let config = match &action {
                UserAction::Add { config, .. }
                | UserAction::List { config }
                | UserAction::Grant { config, .. } => config.clone(),
            };
            let config: outpost_cloud::CloudConfig = load(config.as_deref())?;
            let client = outpost_cloud::admin::AdminClient::from_config(&config)?;
            match action {
                UserAction::Add { name, owner, grants, password_stdin, .. } => {
                    anyhow::ensure!(
                        owner || !grants.is_empty(),
                        "give the user --owner or at least one --grant CUSTOMER:ROLE"
                    );
                    let password = read_password(password_stdin)?;
                    runtime()?.block_on(client.add_user(&name, &password, owner, &grants))?;
                    eprintln!(
                        "user {name} made{}; they sign in on the dashboard",
                        if owner { " (owner)" } else { "" }
                    );
                }
                UserAction::List { .. } => {
                    for u in runtime()?.block_on(client.users())?.as_array().into_iter().flatten() {
                        let grants: Vec<String> = u["grants"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|g| {
                                format!(
                                    "{}:{}",
                                    g["customer"].as_str().unwrap_or("?"),
                                    g["role"].as_str().unwrap_or("?")
                                )
                            })
                            .collect();
                        println!(
                            "{}\t{}\t{}{}",
                            u["name"].as_str().unwrap_or_default(),
                            if u["owner"] == true { "owner" } else { "-" },
                            grants.join(","),
                            u["locked_until"]
                                .as_str()
                                .map(|t| format!("\tlocked until {t}"))
                                .unwrap_or_default()
                        );
                    }
                }
                UserAction::Grant { name, grant, .. } => {
                    let (customer, role) = grant
                        .rsplit_once(':')
                        .ok_or_else(|| anyhow::anyhow!("give CUSTOMER:ROLE, e.g. acme:operator"))?;
                    let role = parse_role(role).map_err(anyhow::Error::msg)?;
                    runtime()?.block_on(client.set_grant(&name, customer, role))?;
                    eprintln!("{name}: {}", grant);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Customer { action } => {
            let CustomerAction::Add { config, id, name, networks } = action;
            let config: outpost_cloud::CloudConfig = load(config.as_deref())?;
            let client = outpost_cloud::admin::AdminClient::from_config(&config)?;
            let name = name.unwrap_or_else(|| id.clone());
            runtime()?.block_on(client.add_customer(&id, &name, &networks))?;
            eprintln!("customer {id} made, holding {} network(s)", networks.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Buffer { data_dir, quarantine, requeue, resend_quarantine } => {
            let connector = outpost_connector::quarantine::exists(&data_dir);
            if resend_quarantine {
                anyhow::ensure!(connector, "{} holds no connector quarantine", data_dir.display());
                let moved = outpost_connector::quarantine::resend(&data_dir).with_context(|| {
                    format!(
                        "cannot move the quarantine in {} (is the connector still running?)",
                        data_dir.display()
                    )
                })?;
                eprintln!("{moved} batches moved back into the buffer; they are forwarded at the next start");
            }
            let (buffer, _) = outpost_shared::buffer::SledBuffer::open(
                &data_dir.join("buffer"),
                u64::MAX,
                outpost_shared::buffer::WhenFull::Reject,
            )
            .with_context(|| {
                format!("cannot open the buffer in {} (is the hub still running?)", data_dir.display())
            })?;
            use outpost_shared::buffer::Storage;
            if quarantine {
                for q in buffer.quarantined(usize::MAX)? {
                    // A reading shows as itself; an unreadable record as the text it holds.
                    let record = serde_json::from_slice::<serde_json::Value>(&q.record)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&q.record).into_owned().into());
                    println!("{}", serde_json::json!({"seq": q.seq, "reason": q.reason, "record": record}));
                }
                return Ok(ExitCode::SUCCESS);
            }
            if requeue {
                let n = buffer.requeue()?;
                println!("{}", serde_json::json!({"requeued": n}));
                return Ok(ExitCode::SUCCESS);
            }
            let st = buffer.stats();
            let first = buffer.oldest(1)?.first().map(|(s, _)| *s);
            let last = buffer.newest(1)?.first().map(|(s, _)| *s);
            let mut out = serde_json::json!({"len": st.len, "bytes": st.bytes, "dropped": st.dropped,
                "next_seq": st.next_seq, "oldest_seq": first, "newest_seq": last,
                "quarantined": st.quarantined, "quarantine_len": st.quarantine_len});
            if connector {
                drop(buffer);
                out["quarantine"] = outpost_connector::quarantine::report(&data_dir)?;
            }
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { data_dir, port, connector_port } => {
            runtime()?.block_on(up(data_dir, port, connector_port.unwrap_or(port.wrapping_add(1))))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Everything on this machine, on loopback only: nothing listens on or sends to other interfaces,
/// and no SSDP goes out (the hub is given the connector's loopback address instead).
async fn up(data_dir: PathBuf, port: u16, connector_port: u16) -> anyhow::Result<()> {
    let cloud_cfg = outpost_cloud::CloudConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: data_dir.join("cloud"),
        ..Default::default()
    };
    let cloud = outpost_cloud::start(cloud_cfg).await.with_context(|| {
        format!("cannot start the cloud on 127.0.0.1:{port}; try `outpost up --port 9443`")
    })?;
    let url = cloud.url();
    // First start: one-time tokens so connector and hub enroll themselves; later starts find
    // their enrollment on disk and need none.
    let token_for = |dir: &Path, role: outpost_shared::model::Role| {
        let enrolled = dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE).exists();
        let trust = cloud.trust.clone();
        async move {
            if enrolled {
                return Ok::<_, anyhow::Error>(None);
            }
            let (t, _) = trust
                .new_token(
                    "default",
                    role,
                    std::time::Duration::from_secs(3600),
                    "outpost up",
                    "outpost up",
                    chrono::Utc::now(),
                )
                .await?;
            Ok(Some(t.encode()))
        }
    };
    let connector_dir = data_dir.join("connector");
    let connector_cfg = outpost_connector::ConnectorConfig {
        data_dir: connector_dir.clone(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], connector_port)),
        cloud: outpost_connector::config::CloudLink {
            url: Some(url.clone()),
            ca_file: Some(cloud.ca_file.clone()),
            enroll_token: token_for(&connector_dir, outpost_shared::model::Role::Connector).await?,
            ..Default::default()
        },
        ssdp: outpost_connector::config::SsdpConfig {
            advertise: false,
            search_hubs: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let connector = outpost_connector::start(connector_cfg).await.with_context(|| {
        format!("cannot start the connector on 127.0.0.1:{connector_port}; try `--connector-port 9444`")
    })?;
    let hub_dir = data_dir.join("sensorhub");
    let relays = UpRelays::start(&data_dir);
    let hub_cfg = outpost_sensorhub::HubConfig {
        data_dir: hub_dir.clone(),
        uplink: outpost_sensorhub::uplink::UplinkConfig {
            connector: Some(connector.loopback_url()),
            cloud: Some(url.clone()),
            ca_file: Some(cloud.ca_file.clone()),
            enroll_token: token_for(&hub_dir, outpost_shared::model::Role::Sensorhub).await?,
            discover: false,
            advertise: false,
            ..Default::default()
        },
        relay: relays.config(),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = outpost_sensorhub::start(hub_cfg, stop.clone()).await.context("cannot start the sensorhub")?;

    println!("Outpost is up.");
    match &cloud.setup_link {
        Some(link) => {
            println!("  Dashboard:   {url}/");
            let valid =
                humantime::format_duration(outpost_cloud::config::PeopleConfig::default().setup_valid);
            println!("  First owner: open this one-time link within {valid}, choose a name and a password:");
            println!("               {link}");
        }
        None => println!("  Dashboard:   {url}/  (sign in; new users: outpost user add)"),
    }
    println!("  CA file:     {}", cloud.ca_file.display());
    println!("  Connector:   {} ({})", connector.loopback_url(), connector.machine_id);
    println!("  Sensorhub:   {} (this machine, through the connector)", hub.machine_id);
    relays.banner();
    println!("  Data:        {}", data_dir.display());
    println!("Press Ctrl-C to stop.");

    stop_signal().await;
    stop.cancel();
    // The hub closes the serial port before the simulator behind it goes away.
    hub.join().await;
    connector.stop().await;
    relays.stop();
    cloud.stop().await?;
    Ok(())
}

/// Simulated relay cards for `outpost up`: the hub drives them through a real pseudo-terminal, so
/// the dashboard shows relay readings without hardware. Without them `up` still runs.
struct UpRelays {
    #[cfg(unix)]
    sim: Option<outpost_sensorhub::relay::SimulatorHandle>,
}

impl UpRelays {
    #[cfg(unix)]
    const CARDS: u8 = 2;

    #[cfg(unix)]
    fn start(data_dir: &Path) -> UpRelays {
        let dir = data_dir.join("relay-sim");
        let sim =
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display())).and_then(|()| {
                outpost_sensorhub::relay::run_simulator(Self::CARDS, Some(dir.join("ttyRELAY0")))
                    .map_err(|e| e.to_string())
            });
        match sim {
            Ok(sim) => UpRelays { sim: Some(sim) },
            Err(e) => {
                tracing::warn!(error = %e, "no simulated relay cards; running without relays");
                UpRelays { sim: None }
            }
        }
    }

    #[cfg(not(unix))]
    fn start(_data_dir: &Path) -> UpRelays {
        tracing::info!("no simulated relay cards: they need a pseudo-terminal, which Windows lacks");
        UpRelays {}
    }

    /// The hub's `[relay]` section: two named relays, the pump switched on again whenever its
    /// card comes up without power (as a fresh simulator does), the siren locked against remote
    /// commands.
    fn config(&self) -> Option<outpost_sensorhub::relay::RelayConfig> {
        use outpost_sensorhub::relay::{RelayConfig, RelaySettings, Restore};
        let port = self.port()?;
        let named = |relay: u8, name: &str, locked: bool, restore: Restore| RelaySettings {
            card: 1,
            relay,
            name: Some(name.into()),
            locked,
            restore,
        };
        Some(RelayConfig {
            poll_interval: std::time::Duration::from_secs(2),
            relays: vec![named(1, "pump", false, Restore::On), named(2, "siren", true, Restore::Unset)],
            ..RelayConfig::new(port)
        })
    }

    /// The simulator's stable path (a symlink to its pseudo-terminal).
    fn port(&self) -> Option<PathBuf> {
        #[cfg(unix)]
        return self.sim.as_ref().map(|s| s.path());
        #[cfg(not(unix))]
        None
    }

    /// Stops the simulator (dropping its handle closes the pseudo-terminal and removes the link).
    fn stop(self) {}

    fn banner(&self) {
        #[cfg(unix)]
        if let Some(sim) = &self.sim {
            let device = sim.device().map(|d| format!(" -> {}", d.display())).unwrap_or_default();
            println!(
                "  Relays:      {} simulated cards on {}{device} (card 1: K1 pump, K2 siren)",
                Self::CARDS,
                sim.path().display()
            );
        }
    }
}
