//! Servers the benchmarks start for their peers on loopback: a private `sshd` for
//! `rsync` over ssh ([`Sshd`]), and the helpers to pick a free TCP port and wait until a
//! server listens on it ([`free_tcp_port`], [`wait_listening`]).

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it).
pub fn free_tcp_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when some socket listens on TCP `port` (any address, IPv4 or IPv6), as
/// `/proc/net/tcp` and `/proc/net/tcp6` show it. Looking there rather than connecting keeps
/// one-shot servers such as `iperf3 -s -1` from taking the probe for their client.
pub fn is_listening(port: u16) -> io::Result<bool> {
    let want = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {table}: {e}"))),
        };
        // Columns: sl local_address rem_address st ...; st 0A is LISTEN.
        let listening = text.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
        });
        if listening {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Waits until TCP `port` is listening, or fails after `timeout`. `alive` is asked between
/// looks and should report whether the server process still runs (an error ends the wait).
pub fn wait_listening(
    port: u16,
    timeout: Duration,
    mut alive: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    let start = Instant::now();
    loop {
        if is_listening(port)? {
            return Ok(());
        }
        alive()?;
        if start.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing listens on TCP port {port} after {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Fails when `child` has exited; used as [`wait_listening`]'s `alive` check.
pub fn still_running(child: &mut Child, what: &str) -> io::Result<()> {
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(io::Error::other(format!(
            "{what} exited before it listened: {status}"
        ))),
    }
}

/// A private `sshd` on 127.0.0.1 for one benchmark: its own host key, one client key
/// authorised for root, its configuration, pid file and log in one folder. Stopped (SIGTERM,
/// then reaped) when dropped, also when the benchmark fails.
///
/// Needs root (sshd's privilege separation), `/usr/sbin/sshd` and `ssh-keygen`.
pub struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The sshd binary.
pub const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Generates keys and a configuration in `dir` (created, emptied of earlier keys), starts
    /// `sshd -D -e -f DIR/sshd_config` on a free port and waits until it listens.
    pub fn start(dir: &Path) -> io::Result<Sshd> {
        let ctx =
            |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        fs::create_dir_all(dir).map_err(ctx(format!("creating {}", dir.display())))?;
        let dir = fs::canonicalize(dir)?;
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd").map_err(ctx(
            "creating /run/sshd (sshd's privilege separation directory; run as root)".into(),
        ))?;
        for key in ["host_key", "client_key"] {
            let path = dir.join(key);
            for stale in [path.clone(), path.with_extension("pub")] {
                match fs::remove_file(&stale) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ctx(format!("removing {}", stale.display()))(e));
                    }
                    _ => {}
                }
            }
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&path)
                .stdin(Stdio::null())
                .status()
                .map_err(ctx(
                    "running ssh-keygen (apt-get install openssh-client)".into()
                ))?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "ssh-keygen for {key} failed: {status}"
                )));
            }
        }
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("client_key.pub"), &authorized)
            .map_err(ctx(format!("writing {}", authorized.display())))?;
        let port = free_tcp_port()?;
        let config = dir.join("sshd_config");
        let text = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host}\n\
             AuthorizedKeysFile {authorized}\n\
             PidFile {pid}\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             LogLevel ERROR\n",
            host = dir.join("host_key").display(),
            authorized = authorized.display(),
            pid = dir.join("sshd.pid").display(),
        );
        fs::write(&config, text).map_err(ctx(format!("writing {}", config.display())))?;
        let test = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .map_err(ctx(format!(
                "running {SSHD} (apt-get install openssh-server)"
            )))?;
        if !test.status.success() {
            return Err(io::Error::other(format!(
                "{SSHD} -t -f {} refused the configuration: {}",
                config.display(),
                String::from_utf8_lossy(&test.stderr).trim()
            )));
        }
        let log = fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(ctx(format!("starting {SSHD}")))?;
        let mut sshd = Sshd { child, port, dir };
        let waited = wait_listening(port, Duration::from_secs(10), || {
            still_running(&mut sshd.child, "sshd")
        });
        if let Err(e) = waited {
            let log = fs::read_to_string(sshd.dir.join("sshd.log")).unwrap_or_default();
            return Err(io::Error::new(
                e.kind(),
                format!("{e}; sshd log: {}", log.trim()),
            ));
        }
        Ok(sshd)
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client key authorised for root.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    /// The `ssh` command line that reaches this sshd without questions, for `rsync -e`.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.port,
            self.client_key().display()
        )
    }

    /// `rsync -a --stats` of the contents of `src` into `dest` on this sshd (as root over
    /// loopback), the benchmarks' peer.
    pub fn rsync(&self, src: &Path, dest: &Path) -> Command {
        let mut src_arg = src.as_os_str().to_owned();
        src_arg.push("/");
        let mut dest_arg = std::ffi::OsString::from("root@127.0.0.1:");
        dest_arg.push(dest.as_os_str());
        dest_arg.push("/");
        let mut rsync = Command::new("rsync");
        rsync
            .args(["-a", "--stats", "-e", &self.ssh_command()])
            .arg(src_arg)
            .arg(dest_arg);
        rsync
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}
