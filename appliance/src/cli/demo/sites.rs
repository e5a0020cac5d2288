//! `freight demo`: a site on loopback. It starts a site server, two standard DPs and a pull DP
//! as real daemon processes in a temporary folder, creates a sample package, distributes it,
//! updates it, redistributes it to one DP under a bandwidth window, with progress bars, the
//! status messages and the status table, then stops everything and cleans up.

use super::sample::{change_sample, sample, step};
use crate::admin::client::AdminClient;
use crate::api::{
    AddGroup, CreatePackage, Done, DpInfo, GroupInfo, PackageInfo, PackageStatus, SetSchedule,
    StatusMessage,
};
use crate::cli::distribution::targets_call;
use crate::cli::dp::{DpCmd, dp_call};
use crate::cli::error::CliError;
use crate::cli::render;
use crate::cli::watch::{self, WatchOpts};
use crate::daemon::ready_fields;
use crate::home::Home;
use freight_core::units::human;
use freight_core::{Role, SiteCode};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The route window of the redistribute step.
const WINDOW: &str = "link 1Gbit/s; daily 20%";

/// One daemon of the demo.
struct Daemon {
    name: &'static str,
    child: Child,
    /// `quic`, `http`, `admin` from the readiness line.
    fields: Vec<(String, String)>,
}

impl Daemon {
    fn field(&self, k: &str) -> Result<String, CliError> {
        self.fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| CliError::Usage(format!("{}: readiness line lacks {k}", self.name)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: a clean stop, as systemd would do it.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Starts the daemon of `config` (this binary's `daemon` command, the same code as freightd)
/// and waits for its readiness line.
fn start(name: &'static str, config: &Path) -> Result<Daemon, CliError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("daemon")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let Some((said, fields)) = ready_fields(&line) else {
        let _ = child.kill();
        return Err(CliError::Usage(format!("{name} did not start: {line:?}")));
    };
    println!("{name}: {said}");
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Ok(Daemon {
        name,
        child,
        fields,
    })
}

/// A host folder: its site home and config; returns the config path.
fn host(work: &Path, name: &str, code: &str, role: &str) -> Result<(Home, PathBuf), CliError> {
    let dir = work.join(name);
    let home = Home::init(&dir.join("home"), SiteCode::parse(code)?)?;
    let config = dir.join("freightd.toml");
    std::fs::write(
        &config,
        format!("home = \"home\"\nlibrary = \"library\"\nlisten = \"127.0.0.1:0\"\n{role}"),
    )?;
    Ok((home, config))
}

/// Runs the demonstration in `work`.
pub fn run(work: &Path, size: u64, quiet: bool) -> Result<(), CliError> {
    step("set up: a site server PS1, standard DPs DP1 and DP2, pull DP PD1 (sources DP1, DP2)");
    let site_role = "[site]\ndatabase = \"site.db\"\nadmin_socket = \"admin.sock\"\ndp_retry_delay = \"2s\"\npull_retry_delay = \"1s\"\npoll_interval = \"250ms\"\n";
    let dp_role = |kind: &str| format!("[dp]\nkind = \"{kind}\"\nhttp = \"127.0.0.1:0\"\n");
    let (ps1, ps1_cfg) = host(work, "ps1", "PS1", site_role)?;
    let (dp1, dp1_cfg) = host(work, "dp1", "DP1", &dp_role("standard"))?;
    let (dp2, dp2_cfg) = host(work, "dp2", "DP2", &dp_role("standard"))?;
    let (pd1, pd1_cfg) = host(work, "pd1", "PD1", &dp_role("pull"))?;
    // Every DP trusts the site server; the pull DP and its sources trust each other. The site
    // server learns the DPs' keys when they are added.
    for dp in [&dp1, &dp2, &pd1] {
        dp.trust.import(&ps1.key.identity(), Role::SiteServer)?;
    }
    for src in [&dp1, &dp2] {
        pd1.trust.import(&src.key.identity(), Role::Dp)?;
        src.trust.import(&pd1.key.identity(), Role::PullDp)?;
    }
    let site = start("site server PS1", &ps1_cfg)?;
    let dps = [
        (start("DP1", &dp1_cfg)?, &dp1, "dp1"),
        (start("DP2", &dp2_cfg)?, &dp2, "dp2"),
        (start("PD1", &pd1_cfg)?, &pd1, "pd1"),
    ];
    let client = AdminClient::new(PathBuf::from(site.field("admin")?));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for (d, home, name) in &dps {
            let sources = if *name == "pd1" {
                vec!["dp1".to_string(), "dp2".to_string()]
            } else {
                Vec::new()
            };
            let add = DpCmd::Add {
                name: name.to_string(),
                address: d.field("quic")?,
                // No identity file: the key is at hand.
                identity: PathBuf::new(),
                http: Some(d.field("http")?),
                pull: !sources.is_empty(),
                sources,
                throttle: None,
            };
            let dp: DpInfo = dp_call(add, |_| Ok(home.key.identity().to_text()))?
                .send(&client)
                .await?;
            println!("added {} DP {} ({}), key {}", dp.kind, dp.name, dp.address, dp.fingerprint);
        }
        let g: GroupInfo = client
            .post(
                "/dpgroups",
                &AddGroup {
                    name: "all".into(),
                    members: vec!["dp1".into(), "dp2".into(), "pd1".into()],
                },
            )
            .await?;
        println!("DP group {}: {}", g.name, g.members.join(", "));

        step(&format!("create package \"tools\" from a {} sample folder", human(size)));
        let src = work.join("source");
        sample(&src, size)?;
        let p: PackageInfo = client
            .post(
                "/packages",
                &CreatePackage {
                    name: "tools".into(),
                    source: src.display().to_string(),
                    priority: None,
                },
            )
            .await?;
        println!(
            "{} v{}: {} files, {}, package hash {}",
            p.id,
            p.version,
            p.files,
            human(p.bytes),
            p.hash
        );
        // Each step shows its own messages: those after the newest one so far.
        let watch = |id: &str, since: i64| WatchOpts {
            package: Some(id.to_string()),
            until_settled: true,
            interval: Duration::from_millis(250),
            timeout: Some(Duration::from_secs(600)),
            json: false,
            quiet,
            since: Some(since),
        };

        step(&format!("distribute {} to DP group all (the pull DP waits for a source)", p.id));
        let since = newest(&client).await?;
        act(&client, &p.id, "distribute", vec![], vec!["all".into()]).await?;
        watch::run(&client, watch(&p.id, since)).await?;

        step("update: change 1 MiB of the installer, add a file, drop a file; only new chunks move");
        change_sample(&src)?;
        let since = newest(&client).await?;
        let p: PackageInfo = client.post(&format!("/packages/{}/update", p.id), &()).await?;
        println!("{} v{}: {} files, {}", p.id, p.version, p.files, human(p.bytes));
        watch::run(&client, watch(&p.id, since)).await?;

        step(&format!("redistribute to DP1 under the bandwidth window \"{WINDOW}\""));
        let _: DpInfo = client
            .put("/dps/dp1/schedule", &SetSchedule { throttle: WINDOW.into() })
            .await?;
        let since = newest(&client).await?;
        act(&client, &p.id, "redistribute", vec!["dp1".into()], vec![]).await?;
        watch::run(&client, watch(&p.id, since)).await?;

        step("status");
        let tz = jiff::tz::TimeZone::system();
        let rows: Vec<PackageStatus> = client.get(&format!("/status?package={}", p.id)).await?;
        let pkgs: Vec<PackageInfo> = client.get("/packages").await?;
        print!("{}", render::status_and_summary(&rows, &pkgs, &tz));
        let http = dps[2].0.field("http")?;
        println!(
            "every DP serves the files over HTTP, e.g. curl http://{http}/packages/{}/latest/files/docs/CHANGES.txt",
            p.id
        );
        Ok::<(), CliError>(())
    })?;
    step("stop the daemons (SIGTERM) and clean up");
    drop(dps);
    drop(site);
    println!("\ndemo complete");
    Ok(())
}

/// The sequence number of the newest status message.
async fn newest(client: &AdminClient) -> Result<i64, CliError> {
    let msgs: Vec<StatusMessage> = client.get("/messages").await?;
    Ok(msgs.last().map_or(0, |m| m.seq))
}

async fn act(
    client: &AdminClient,
    id: &str,
    action: &str,
    dps: Vec<String>,
    groups: Vec<String>,
) -> Result<(), CliError> {
    let d: Done = targets_call(action, id, dps, groups, vec![])?
        .send(client)
        .await?;
    println!("{}", d.done);
    Ok(())
}
