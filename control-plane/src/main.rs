//! The `weft` binary: the operator's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weft_api::resources::check::check;
use weft_control::compile::{Index, MeshSettings, Target};
use weft_control::inject;
use weft_control::load::{load, read_bounded};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "weft service mesh: control plane and operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate manifests offline; print every error as file:document:field.path: message.
    Check {
        /// Files or directories (recursively, *.yaml and *.yml); `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the config the control plane would give a proxy in NAMESPACE, in the format of
    /// `weft-proxy run --config`.
    Compile {
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// The proxy's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The proxy's pod (in NAMESPACE): the ServerPolicies selecting it are compiled in.
        #[arg(long)]
        pod: Option<String>,
        /// The mesh-wide outbound traffic policy, as `weft control` takes it.
        #[arg(long, default_value = "ALLOW_ANY")]
        outbound_traffic_policy: weft_api::config::OutboundTrafficPolicy,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Run the control plane: serve a manifest directory to the proxies.
    Control(Box<weft_control::control::ControlArgs>),
    /// Bootstrap tokens for local mode.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the connected proxies, the config versions they run, and rejected manifests.
    Status(weft_control::status::StatusArgs),
    /// Print the CustomResourceDefinitions of weft's kinds (BackendPolicy, ServerPolicy), for
    /// `kubectl apply -f -`; with --output-dir, write one file each.
    Crds {
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Run a small mesh on loopback addresses and show what it does (no cluster, no root).
    Demo(weft_control::demo::DemoArgs),
    /// Add the mesh to the pod templates of Kubernetes YAML (Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job, CronJob, Pod, List items) and write it to standard output;
    /// other documents pass through unchanged. Idempotent.
    Inject(InjectArgs),
    /// Print the install manifests (manifests/install/): the namespace, RBAC, the control
    /// plane's Deployment and Service, the trust anchor and the webhook configuration, for
    /// `kubectl apply -f -`.
    Install {
        /// The image for the control plane and the proxies it injects.
        #[arg(long, default_value = inject::pod::DEFAULT_IMAGE)]
        image: String,
    },
    /// Remove what `weft inject` added, restoring the app's probes.
    Uninject {
        /// A file, or `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// A file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    path: PathBuf,
    /// The image holding weft-proxy, for the proxy and its init container.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = inject::pod::DEFAULT_IMAGE)]
    image: String,
    /// The control plane's config stream and CA, host:port.
    #[arg(long, default_value = inject::pod::DEFAULT_CONTROL_PLANE)]
    control_plane: String,
    /// The control plane's namespace (its SPIFFE ID's).
    #[arg(long, default_value = "weft-system")]
    control_plane_namespace: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The proxy as a native sidecar (Kubernetes 1.29 and later); with false, the first
    /// regular container, holding the app's containers until it is ready.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecar: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token that proves NAMESPACE/SERVICE_ACCOUNT to the control plane using --state.
    Create {
        /// The control plane's state directory (its token secret).
        #[arg(long, env = "WEFT_STATE")]
        state: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token is valid.
        #[arg(long, default_value = "8760h")]
        ttl: weft_api::duration::Dur,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths } => return check_command(&paths),
        Command::Compile {
            paths,
            namespace,
            pod,
            outbound_traffic_policy,
            output,
        } => compile_command(
            &paths,
            &Target {
                namespace,
                pod_name: pod,
                pod_ip: None,
            },
            &MeshSettings {
                outbound_traffic_policy,
                ..MeshSettings::default()
            },
            output,
        ),
        Command::Control(args) => weft_control::control::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Token(TokenCommand::Create {
            state,
            namespace,
            service_account,
            ttl,
        }) => create_token(&state, &namespace, &service_account, ttl.0),
        Command::Status(args) => weft_control::status::run(&args).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }),
        Command::Crds { output_dir } => crds_command(output_dir.as_deref()),
        Command::Demo(args) => weft_control::demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Inject(args) => {
            let settings = inject::Settings {
                image: args.image,
                control_plane: args.control_plane,
                control_plane_namespace: args.control_plane_namespace,
                trust_domain: args.trust_domain,
                native_sidecar: args.native_sidecar,
            };
            inject_command(&args.path, &settings, inject::Direction::Inject)
        }
        Command::Install { image } => {
            print!("{}", weft_control::install::rendered(&image));
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninject { path } => inject_command(
            &path,
            &inject::Settings::default(),
            inject::Direction::Uninject,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What an unresolved reference of an accepted route does.
const UNRESOLVED: &str = "a parent that is not there holds no route, a backend's share of requests is answered 500 (gRPC UNAVAILABLE), a mirror copies nothing";

fn check_command(paths: &[PathBuf]) -> ExitCode {
    let (manifests, mut errors) = load(paths);
    let checked = check(manifests);
    errors.extend(checked.errors);
    for e in &errors {
        println!("{e}");
    }
    // Accepted all the same, as the Gateway API says: the route serves without the reference.
    for e in &checked.unresolved {
        println!("warning: {e} (accepted; {})", UNRESOLVED);
    }
    if errors.is_empty() {
        println!("{} manifests valid", checked.accepted.len());
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} errors; {} manifests valid",
            errors.len(),
            checked.accepted.len()
        );
        ExitCode::FAILURE
    }
}

fn compile_command(
    paths: &[PathBuf],
    target: &Target,
    mesh: &MeshSettings,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let (manifests, mut errors) = load(paths);
    let checked = check(manifests);
    errors.extend(checked.errors);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::bail!("{} errors; nothing compiled", errors.len());
    }
    for e in &checked.unresolved {
        eprintln!("warning: {e} (accepted; {})", UNRESOLVED);
    }
    let config = Index::new(&checked.accepted).compile(target, mesh);
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&config)?,
        Output::Yaml => serde_saphyr::to_string(&config)?,
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn create_token(
    state: &std::path::Path,
    namespace: &str,
    service_account: &str,
    ttl: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        weft_api::validate::is_dns_label(namespace),
        "--namespace {namespace:?} is not a DNS label"
    );
    anyhow::ensure!(
        weft_api::validate::is_dns_name(service_account),
        "--service-account {service_account:?} is not a DNS name"
    );
    std::fs::create_dir_all(state)?;
    let tokens = weft_control::token::Tokens::open(state)?;
    println!("{}", tokens.create(namespace, service_account, ttl));
    Ok(ExitCode::SUCCESS)
}

fn crds_command(output_dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    match output_dir {
        Some(dir) => weft_control::crds::write(dir)?,
        None => {
            let docs: Vec<String> = weft_control::crds::rendered()?
                .into_iter()
                .map(|(_, yaml)| yaml)
                .collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `weft inject` and `weft uninject`: the stream to standard output, what happened to each
/// pod template to standard error.
fn inject_command(
    path: &std::path::Path,
    settings: &inject::Settings,
    direction: inject::Direction,
) -> anyhow::Result<ExitCode> {
    let text = if path.as_os_str() == "-" {
        read_bounded(std::io::stdin())
    } else {
        std::fs::File::open(path).and_then(read_bounded)
    }
    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= weft_api::resources::MAX_FILE_BYTES,
        "{} is larger than the {} MiB weft reads",
        path.display(),
        weft_api::resources::MAX_FILE_BYTES >> 20
    );
    let origin = if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    let (out, notices) = inject::inject_stream(&origin, &text, settings, direction)?;
    let verb = match direction {
        inject::Direction::Inject => "inject",
        inject::Direction::Uninject => "uninject",
    };
    for notice in &notices {
        eprintln!("weft {verb}: {origin}: {notice}");
    }
    use std::io::Write as _;
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
