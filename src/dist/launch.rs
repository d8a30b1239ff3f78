//! `moco-server train --nproc N`: spawns the ranks of this machine and supervises them, as
//! torchrun does. Each rank is this same program with the same arguments, told its place by the
//! environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
//! MASTER_PORT), so ranks started by torchrun, Slurm or by hand work the same way.
//!
//! Rank 0 reports (its progress bar or JSON lines pass through) and writes the checkpoints. The
//! other ranks' messages reach the terminal prefixed with their rank. The first rank that fails
//! ends the run: the others are stopped and the run reports that rank and its reason, so a dead
//! rank never leaves the rest waiting. Ctrl-C interrupts every rank at the same step, and rank 0
//! writes the checkpoint to resume from.
use super::group::{CommBackend, Rendezvous};
use crate::train::events::RunOutcome;
use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment that makes this program a rank, and the one that names the run's directory
/// (every rank must agree on it; rank 0 writes there).
const RUN_DIR_ENV: &str = "MOCO_RUN_DIR";
const BACKEND_ENV: &str = "MOCO_DIST_BACKEND";
const TIMEOUT_ENV: &str = "MOCO_DIST_TIMEOUT";

/// The exit status of a rank that stopped on Ctrl-C (or a cancel) after rank 0 saved.
pub const INTERRUPTED_STATUS: i32 = 130;

/// Where rank 0's store listens unless told: this machine, torchrun's default port.
const DEFAULT_MASTER_ADDR: &str = "127.0.0.1";
const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long a rank waits for the others (PyTorch's default for Gloo), in seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;

#[derive(clap::Args, Debug, Clone)]
pub struct LaunchArgs {
    /// Processes on this machine, one per device: CPU processes over Gloo, GPUs over NCCL (the
    /// `devices` setting; default: the config's, 1 unless set). batch_size is the global batch,
    /// split evenly over all ranks of all machines.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub nproc: Option<u16>,
    /// Collective backend: gloo (CPU) or nccl (CUDA). Default: nccl when the run's device is a
    /// GPU, gloo otherwise.
    #[arg(long, value_parser = ["gloo", "nccl"])]
    pub backend: Option<String>,
    /// Machines taking part; each runs this command with its own --node-rank.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub nnodes: u16,
    /// This machine's index among the --nnodes (0 serves the rendezvous and holds rank 0).
    #[arg(long, default_value_t = 0)]
    pub node_rank: u16,
    /// Address of the machine with --node-rank 0 (the rendezvous store).
    #[arg(long, default_value = DEFAULT_MASTER_ADDR)]
    pub master_addr: String,
    /// Port of the rendezvous store on that machine. Default: 29500 across machines, a free
    /// port on one machine.
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds a rank waits for the others (to join, and in any collective) before the run
    /// fails instead of hanging.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub dist_timeout: u64,
}

impl LaunchArgs {
    /// Processes on this machine.
    pub fn nproc(&self) -> usize {
        self.nproc.map_or(1, usize::from)
    }

    pub fn world(&self) -> usize {
        self.nproc() * usize::from(self.nnodes)
    }

    /// Whether this command trains on more than one process.
    pub fn is_distributed(&self) -> bool {
        self.world() > 1
    }

    /// Every flag checked before anything starts.
    pub fn validate(&self, cuda_run: bool) -> anyhow::Result<CommBackend> {
        if self.node_rank >= self.nnodes {
            bail!(
                "--node-rank: {} is not below --nnodes {}",
                self.node_rank,
                self.nnodes
            );
        }
        let backend = match self.backend.as_deref() {
            Some(name) => name.parse().map_err(|_| anyhow!("--backend: {name:?}"))?,
            None if cuda_run => CommBackend::Nccl,
            None => CommBackend::Gloo,
        };
        match backend {
            CommBackend::Gloo if cuda_run => bail!(
                "--backend gloo trains on the CPU: set device=cpu, or use --backend nccl for GPUs"
            ),
            CommBackend::Nccl if !cuda_run => {
                bail!("--backend nccl needs GPUs: set device=cuda (or auto on a GPU machine)")
            }
            // The GPUs themselves were checked with the config (`devices`).
            CommBackend::Nccl | CommBackend::Gloo => {}
        }
        Ok(backend)
    }
}

/// This process's place in a distributed run, read from the environment the launcher sets.
#[derive(Debug, Clone)]
pub struct RankPlace {
    pub rendezvous: Rendezvous,
    pub local_rank: usize,
    pub local_world: usize,
    /// The run directory every rank agreed on.
    pub run_dir: Option<PathBuf>,
}

impl RankPlace {
    /// The place the environment gives this process, if it is a rank (RANK and WORLD_SIZE set).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok();
        let (Some(rank), Some(world)) = (var("RANK"), var("WORLD_SIZE")) else {
            return Ok(None);
        };
        let number = |name: &str, value: &str| -> anyhow::Result<usize> {
            value
                .parse()
                .map_err(|_| anyhow!("{name}: {value:?} is not a number"))
        };
        let rank = number("RANK", &rank)?;
        let world = number("WORLD_SIZE", &world)?;
        let local_rank = number(
            "LOCAL_RANK",
            &var("LOCAL_RANK").unwrap_or_else(|| "0".into()),
        )?;
        let local_world = number(
            "LOCAL_WORLD_SIZE",
            &var("LOCAL_WORLD_SIZE").unwrap_or_else(|| world.to_string()),
        )?;
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| DEFAULT_MASTER_ADDR.into());
        let master_port = match var("MASTER_PORT") {
            Some(port) => port
                .parse()
                .map_err(|_| anyhow!("MASTER_PORT: {port:?} is not a port"))?,
            None => DEFAULT_MASTER_PORT,
        };
        let backend = match var(BACKEND_ENV) {
            Some(name) => name
                .parse()
                .map_err(|_| anyhow!("{BACKEND_ENV}: {name:?} is not gloo or nccl"))?,
            None => CommBackend::Gloo,
        };
        let timeout = match var(TIMEOUT_ENV) {
            Some(s) => Duration::from_secs(number(TIMEOUT_ENV, &s)? as u64),
            None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        if rank >= world {
            bail!("RANK {rank} is not below WORLD_SIZE {world}");
        }
        if local_rank >= local_world || local_world > world {
            bail!(
                "LOCAL_RANK {local_rank} must be below LOCAL_WORLD_SIZE {local_world}, which is at \
                 most WORLD_SIZE {world}"
            );
        }
        // Ranks on one machine talk over loopback; across machines Gloo binds the interface
        // GLOO_SOCKET_IFNAME names (as in PyTorch), else the address the hostname resolves to.
        let bind = if local_world == world {
            "127.0.0.1".to_string()
        } else {
            var("GLOO_SOCKET_IFNAME")
                .map(|name| format!("if:{name}"))
                .unwrap_or_default()
        };
        Ok(Some(RankPlace {
            rendezvous: Rendezvous {
                master_addr,
                master_port,
                rank,
                world,
                backend,
                timeout,
                bind,
            },
            local_rank,
            local_world,
            run_dir: var(RUN_DIR_ENV).map(PathBuf::from),
        }))
    }

    /// libtorch's threads for this rank: the cores shared among this machine's ranks (unless
    /// OMP_NUM_THREADS says otherwise), so they do not oversubscribe the CPU.
    pub fn set_threads(&self) {
        if std::env::var_os("OMP_NUM_THREADS").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / self.local_world.max(1)).max(1) as i32);
    }
}

/// The child `command` starts gets SIGTERM when the thread that started it ends (its parent
/// killed, say), as from Ctrl-C: a run stops rather than train on unwatched.
pub fn terminate_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // The parent may have died before the prctl: then nobody would send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the parent exited"));
            }
            Ok(())
        });
    }
}

/// One spawned rank.
struct RankProcess {
    rank: usize,
    child: Child,
    /// The last line it wrote to stderr (the reason it gives when it fails).
    last_words: Arc<Mutex<String>>,
    exit: Option<(ExitStatus, Instant)>,
}

/// Spawns this machine's ranks of the run and waits for them. Returns the exit code: success
/// when every rank completed, 130 when they were interrupted, failure when a rank failed (its
/// rank and reason reported, as a JSON outcome with `json`).
pub fn supervise(
    args: &LaunchArgs,
    backend: CommBackend,
    run_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let port = match args.master_port {
        Some(port) => port,
        None if args.nnodes == 1 => free_port()?,
        None => DEFAULT_MASTER_PORT,
    };
    let exe = std::env::current_exe().context("cannot find this program to start the ranks")?;
    let nproc = args.nproc();
    let first_rank = usize::from(args.node_rank) * nproc;
    let last_step = Arc::new(Mutex::new(0i64));
    let mut ranks = Vec::with_capacity(nproc);
    for local in 0..nproc {
        let rank = first_rank + local;
        let mut command = Command::new(&exe);
        command
            .args(std::env::args_os().skip(1))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.world().to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env(BACKEND_ENV, backend.to_string())
            .env(TIMEOUT_ENV, args.dist_timeout.to_string())
            .env(RUN_DIR_ENV, run_dir)
            // Its own process group: a Ctrl-C at the terminal reaches the launcher only, which
            // passes it on once.
            .process_group(0)
            .stdin(Stdio::null());
        // A launcher that dies without stopping its ranks (killed) leaves none training on
        // unwatched: they stop together after rank 0's checkpoint.
        terminate_with_parent(&mut command);
        let leader = rank == 0;
        // Rank 0's progress bar draws only on a terminal: its stderr is ours, except with JSON
        // lines, where its last words are kept like the other ranks'.
        command.stderr(if leader && !json {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
        command.stdout(match (leader, json) {
            (true, true) => Stdio::piped(),
            (true, false) => Stdio::inherit(),
            (false, _) => Stdio::null(),
        });
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        let last_words = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let words = last_words.clone();
            let prefix = if leader {
                String::new()
            } else {
                format!("[rank {rank}] ")
            };
            std::thread::spawn(move || relay_stderr(stderr, &prefix, &words));
        }
        if let Some(stdout) = child.stdout.take() {
            let step = last_step.clone();
            std::thread::spawn(move || relay_json(stdout, &step));
        }
        ranks.push(RankProcess {
            rank,
            child,
            last_words,
            exit: None,
        });
    }
    let pids: Vec<i32> = ranks.iter().map(|r| r.child.id() as i32).collect();
    let interrupts = Arc::new(std::sync::atomic::AtomicU8::new(0));
    {
        let (pids, interrupts) = (pids.clone(), interrupts.clone());
        ctrlc::set_handler(move || {
            let seen = interrupts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if seen == 0 {
                eprintln!(
                    "\ninterrupt: every rank stops after this step and rank 0 saves a checkpoint \
                     (press Ctrl-C again to quit at once)"
                );
                signal_all(&pids, libc::SIGINT);
            } else {
                eprintln!("\nstopping every rank now");
                signal_all(&pids, libc::SIGKILL);
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let failure = wait_for_ranks(&mut ranks);
    let step = *last_step.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(reason) = failure {
        if json {
            let outcome = RunOutcome::Failed { step, reason };
            println!("{}", serde_json::to_string(&outcome)?);
        } else {
            eprintln!("failed: {reason}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let interrupted = ranks.iter().any(|r| {
        r.exit
            .is_some_and(|(status, _)| status.code() == Some(INTERRUPTED_STATUS))
    });
    Ok(if interrupted {
        ExitCode::from(INTERRUPTED_STATUS as u8)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits until every rank has exited. When one fails, the others are stopped (they would wait
/// for it until the timeout) and the first failure's description is returned.
fn wait_for_ranks(ranks: &mut [RankProcess]) -> Option<String> {
    const POLL: Duration = Duration::from_millis(20);
    const GRACE: Duration = Duration::from_secs(10);
    let mut stopping_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        for r in ranks.iter_mut().filter(|r| r.exit.is_none()) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.exit = Some((status, now));
            }
        }
        let failed = ranks
            .iter()
            .any(|r| r.exit.is_some_and(|(s, _)| is_failure(s)));
        if failed && stopping_since.is_none() {
            stopping_since = Some(now);
            let alive: Vec<i32> = ranks
                .iter()
                .filter(|r| r.exit.is_none())
                .map(|r| r.child.id() as i32)
                .collect();
            signal_all(&alive, libc::SIGTERM);
        }
        if let Some(since) = stopping_since {
            if since.elapsed() > GRACE {
                for r in ranks.iter_mut().filter(|r| r.exit.is_none()) {
                    let _ = r.child.kill();
                }
            }
        }
        if ranks.iter().all(|r| r.exit.is_some()) {
            break;
        }
        std::thread::sleep(POLL);
    }
    // The first to fail is the cause; the others failed because it did. Within one poll, a
    // rank killed by a signal is the likelier cause than one whose collective broke.
    ranks
        .iter()
        .filter_map(|r| r.exit.filter(|(s, _)| is_failure(*s)).map(|e| (r, e)))
        .min_by_key(|(_, (status, at))| (*at, status.signal().is_none()))
        .map(|(r, (status, _))| describe_failure(r, status))
}

fn is_failure(status: ExitStatus) -> bool {
    !status.success() && status.code() != Some(INTERRUPTED_STATUS)
}

fn describe_failure(r: &RankProcess, status: ExitStatus) -> String {
    let words = r.last_words.lock().map(|w| w.clone()).unwrap_or_default();
    let how = match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        (Some(code), _) => format!("exited with status {code}"),
        _ => "stopped".to_string(),
    };
    if words.is_empty() {
        format!("rank {} (pid {}) {how}", r.rank, r.child.id())
    } else {
        format!("rank {} (pid {}) {how}: {words}", r.rank, r.child.id())
    }
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill(2) with the pid of a child we spawned; a stale pid only fails.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Copies a rank's stderr to ours, each line prefixed, remembering its last non-empty line.
fn relay_stderr(stderr: impl std::io::Read, prefix: &str, last: &Mutex<String>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let mut out = std::io::stderr().lock();
        if prefix.is_empty() {
            let _ = out.write_all(text.as_bytes());
        } else {
            let _ = write!(out, "{prefix}{text}");
        }
        // A line a progress bar redrew with carriage returns: its last segment is what it said
        // last.
        let trimmed = text.trim_end_matches(['\n', '\r']).trim();
        if !trimmed.is_empty() {
            if let Ok(mut words) = last.lock() {
                *words = trimmed.rsplit('\r').next().unwrap_or(trimmed).to_string();
            }
        }
        line.clear();
    }
}

/// Copies rank 0's JSON lines to our stdout, noting the last step they report.
fn relay_json(stdout: impl std::io::Read, last_step: &Mutex<i64>) {
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(step) = value.get("step").and_then(|s| s.as_i64()) {
                if let Ok(mut last) = last_step.lock() {
                    *last = step;
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// A port on loopback that nothing listens on now (rank 0's store binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port for the rendezvous")?;
    Ok(listener.local_addr()?.port())
}
