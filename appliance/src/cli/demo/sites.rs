//! `freight demo`: a hierarchy of sites on loopback. It starts three site servers (CAS → PS1 →
//! SS1) and five DPs (one at the CAS, two standard and a pull DP at PS1, one at SS1) as real
//! daemon processes in a temporary folder, creates a sample package at the CAS, distributes it
//! down the hierarchy, updates it, redistributes it to one of PS1's DPs under a bandwidth
//! window, shows an address window holding a low-priority package while a high-priority one
//! goes, with every site's status messages as they come and the status rolled up at the CAS,
//! then stops everything and cleans up.

use super::sample::{change_sample, sample, step};
use crate::admin::client::AdminClient;
use crate::api::{
    AddAddress, AddSite, AddressInfo, AddressSchedule, CreatePackage, Done, DpInfo, PackageInfo,
    PackageStatus, Priority, SenderKind, SetSchedule, SiteInfo, StatusMessage,
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
    step(
        "set up a hierarchy: CAS → PS1 → SS1; DPs CASDP at CAS, DP1 and DP2 and pull DP PD1 (sources DP1, DP2) at PS1, SSDP at SS1",
    );
    let site_role = "[site]\ndatabase = \"site.db\"\nadmin_socket = \"admin.sock\"\ndp_retry_delay = \"2s\"\npull_retry_delay = \"1s\"\npoll_interval = \"250ms\"\nsender_retry_delay = \"2s\"\n";
    let dp_role = |kind: &str| format!("[dp]\nkind = \"{kind}\"\nhttp = \"127.0.0.1:0\"\n");
    let (cas, cas_cfg) = host(work, "cas", "CAS", site_role)?;
    let (ps1, ps1_cfg) = host(work, "ps1", "PS1", site_role)?;
    let (ss1, ss1_cfg) = host(work, "ss1", "SS1", site_role)?;
    let (casdp, casdp_cfg) = host(work, "casdp", "CDP", &dp_role("standard"))?;
    let (dp1, dp1_cfg) = host(work, "dp1", "DP1", &dp_role("standard"))?;
    let (dp2, dp2_cfg) = host(work, "dp2", "DP2", &dp_role("standard"))?;
    let (pd1, pd1_cfg) = host(work, "pd1", "PD1", &dp_role("pull"))?;
    let (ssdp, ssdp_cfg) = host(work, "ssdp", "SDP", &dp_role("standard"))?;
    // Every DP trusts its site server; the pull DP and its sources trust each other. A site
    // server learns its DPs' keys when they are added, and its parent's and children's keys
    // when the hierarchy is configured.
    casdp.trust.import(&cas.key.identity(), Role::SiteServer)?;
    for dp in [&dp1, &dp2, &pd1] {
        dp.trust.import(&ps1.key.identity(), Role::SiteServer)?;
    }
    ssdp.trust.import(&ss1.key.identity(), Role::SiteServer)?;
    for src in [&dp1, &dp2] {
        pd1.trust.import(&src.key.identity(), Role::Dp)?;
        src.trust.import(&pd1.key.identity(), Role::PullDp)?;
    }
    let sites = [
        start("site server CAS", &cas_cfg)?,
        start("site server PS1", &ps1_cfg)?,
        start("site server SS1", &ss1_cfg)?,
    ];
    let dps = [
        (start("CASDP", &casdp_cfg)?, &casdp, "casdp", 0),
        (start("DP1", &dp1_cfg)?, &dp1, "dp1", 1),
        (start("DP2", &dp2_cfg)?, &dp2, "dp2", 1),
        (start("PD1", &pd1_cfg)?, &pd1, "pd1", 1),
        (start("SSDP", &ssdp_cfg)?, &ssdp, "ssdp", 2),
    ];
    let clients: Vec<(&str, AdminClient)> = ["CAS", "PS1", "SS1"]
        .iter()
        .zip(&sites)
        .map(|(c, d)| Ok((*c, AdminClient::new(PathBuf::from(d.field("admin")?)))))
        .collect::<Result<_, CliError>>()?;
    let (cas_c, ps1_c) = (&clients[0].1, &clients[1].1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for (d, home, name, at) in &dps {
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
                .send(&clients[*at].1)
                .await?;
            println!(
                "{}: added {} DP {} ({}), key {}",
                clients[*at].0, dp.kind, dp.name, dp.address, dp.fingerprint
            );
        }
        let homes = [&cas, &ps1, &ss1];
        for (up, down) in [(0usize, 1usize), (1, 2)] {
            let (pc, cc) = (&clients[up], &clients[down]);
            let _: SiteInfo = pc
                .1
                .post(
                    "/sites/children",
                    &AddSite {
                        code: cc.0.into(),
                        identity: Some(homes[down].key.identity().to_text()),
                        address: None,
                    },
                )
                .await?;
            let a: AddressInfo = pc
                .1
                .post(
                    "/addresses",
                    &AddAddress {
                        site: cc.0.into(),
                        kind: SenderKind::Standard,
                        endpoint: Some(sites[down].field("quic")?),
                        schedule: AddressSchedule::default(),
                        retries: None,
                        retry_delay: None,
                        max_sends: None,
                    },
                )
                .await?;
            let _: SiteInfo = cc
                .1
                .put(
                    "/sites/parent",
                    &AddSite {
                        code: pc.0.into(),
                        identity: Some(homes[up].key.identity().to_text()),
                        address: Some(sites[up].field("quic")?),
                    },
                )
                .await?;
            println!(
                "{} is the parent of {}; address {} {}",
                pc.0,
                cc.0,
                a.kind,
                a.endpoint.unwrap_or_default()
            );
        }
        // The CAS learns of SS1 from PS1's first report.
        wait_for_site(cas_c, "SS1").await?;

        step(&format!("create package \"tools\" at the CAS from a {} sample folder", human(size)));
        let src = work.join("source");
        sample(&src, size)?;
        let p = create(cas_c, "tools", &src, None).await?;
        let mut seen = Seen::default();
        seen.skip_all(&clients).await?;

        step(&format!(
            "distribute {} to CASDP and to sites PS1 and SS1: the Sender sends it down, each Despooler hands it to its DistMgr (PS1's pull DP waits for a source)",
            p.id
        ));
        let d: Done = targets_call("distribute", &p.id, vec!["casdp".into()], vec![], vec!["PS1".into(), "SS1".into()])?
            .send(cas_c)
            .await?;
        println!("{}", d.done);
        follow(&clients, &mut seen, &p.id, 5, p.version, quiet).await?;

        step("update at the CAS: change 1 MiB of the installer, add a file, drop a file; each hop moves only new chunks");
        change_sample(&src)?;
        let p: PackageInfo = cas_c.post(&format!("/packages/{}/update", p.id), &()).await?;
        println!("{} v{}: {} files, {}", p.id, p.version, p.files, human(p.bytes));
        follow(&clients, &mut seen, &p.id, 5, p.version, quiet).await?;
        print_sends(cas_c, "CAS").await?;
        print_sends(ps1_c, "PS1").await?;

        step(&format!("redistribute {} to DP1, at PS1, under the bandwidth window \"{WINDOW}\"", p.id));
        let _: DpInfo = ps1_c
            .put("/dps/dp1/schedule", &SetSchedule { throttle: WINDOW.into() })
            .await?;
        let since = newest(ps1_c).await?;
        let d: Done = targets_call("redistribute", &p.id, vec!["dp1".into()], vec![], vec![])?
            .send(ps1_c)
            .await?;
        println!("{}", d.done);
        watch::run(
            ps1_c,
            WatchOpts {
                package: Some(p.id.clone()),
                until_settled: true,
                interval: Duration::from_millis(250),
                timeout: Some(Duration::from_secs(600)),
                json: false,
                quiet,
                since: Some(since),
            },
        )
        .await?;
        seen.skip_all(&clients).await?;

        step(&format!("the address CAS → PS1 opens to high priority only (\"{HIGH_ONLY}\"): a low-priority package waits while a high-priority one goes"));
        let _: AddressInfo = cas_c
            .put(
                "/addresses/PS1/schedule?kind=standard",
                &AddressSchedule { text: Some(HIGH_ONLY.into()), toml: None },
            )
            .await?;
        let lo_src = work.join("wallpapers");
        let hi_src = work.join("hotfix");
        sample(&lo_src, (size / 8).max(1 << 20))?;
        sample(&hi_src, (size / 16).max(1 << 20))?;
        let lo = create(cas_c, "wallpapers", &lo_src, Some(Priority::Low)).await?;
        let hi = create(cas_c, "hotfix", &hi_src, Some(Priority::High)).await?;
        for id in [&lo.id, &hi.id] {
            let d: Done = targets_call("distribute", id, vec![], vec![], vec!["PS1".into()])?
                .send(cas_c)
                .await?;
            println!("{}", d.done);
        }
        follow(&clients, &mut seen, &hi.id, 3, 1, quiet).await?;
        print_sends(cas_c, "CAS").await?;
        step(&format!("the window opens (\"{OPEN}\"): the low-priority package goes"));
        let _: AddressInfo = cas_c
            .put(
                "/addresses/PS1/schedule?kind=standard",
                &AddressSchedule { text: Some(OPEN.into()), toml: None },
            )
            .await?;
        follow(&clients, &mut seen, &lo.id, 3, 1, quiet).await?;

        step("status at the CAS: every DP of the hierarchy, rolled up (SITE/DP for the sites below)");
        let tz = jiff::tz::TimeZone::system();
        let rows: Vec<PackageStatus> = cas_c.get("/status").await?;
        let pkgs: Vec<PackageInfo> = cas_c.get("/packages").await?;
        print!("{}", render::status_and_summary(&rows, &pkgs, &tz));
        let http = dps[4].0.field("http")?;
        println!(
            "every DP serves the files over HTTP, e.g. curl http://{http}/packages/{}/latest/files/docs/CHANGES.txt",
            p.id
        );
        Ok::<(), CliError>(())
    })?;
    step("stop the daemons (SIGTERM) and clean up");
    drop(dps);
    drop(sites);
    println!("\ndemo complete");
    Ok(())
}

/// The window that holds low and medium priority.
const HIGH_ONLY: &str = "daily high";
/// The window open to all.
const OPEN: &str = "daily all";

/// Creates a package at a site from `src`.
async fn create(
    client: &AdminClient,
    name: &str,
    src: &Path,
    priority: Option<Priority>,
) -> Result<PackageInfo, CliError> {
    let p: PackageInfo = client
        .post(
            "/packages",
            &CreatePackage {
                name: name.into(),
                source: src.display().to_string(),
                priority,
            },
        )
        .await?;
    println!(
        "{} \"{}\" v{} ({} priority): {} files, {}, package hash {}",
        p.id,
        p.name,
        p.version,
        p.priority.name(),
        p.files,
        human(p.bytes),
        p.hash
    );
    Ok(p)
}

/// Waits until the CAS knows `site` (from its children's reports).
async fn wait_for_site(cas: &AdminClient, site: &str) -> Result<(), CliError> {
    for _ in 0..600 {
        let below: Vec<(String, String)> = cas.get("/sites/below").await?;
        if below.iter().any(|(code, _)| code == site) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(CliError::Usage(format!(
        "the CAS never heard of site {site} from its children"
    )))
}

/// Status messages already shown, per site.
#[derive(Default)]
struct Seen(std::collections::HashMap<String, i64>);

impl Seen {
    /// Marks every message so far as shown.
    async fn skip_all(&mut self, clients: &[(&str, AdminClient)]) -> Result<(), CliError> {
        for (code, c) in clients {
            self.0.insert(code.to_string(), newest(c).await?);
        }
        Ok(())
    }
}

/// Prints each site's new messages (prefixed with its code) until the CAS's rolled-up status
/// shows `want` DPs of `package` Installed at `version`.
async fn follow(
    clients: &[(&str, AdminClient)],
    seen: &mut Seen,
    package: &str,
    want: usize,
    version: u32,
    quiet: bool,
) -> Result<(), CliError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut last_line = String::new();
    loop {
        for (code, c) in clients {
            let since = seen.0.get(*code).copied().unwrap_or(0);
            let msgs: Vec<StatusMessage> = c.get(&format!("/messages?since={since}")).await?;
            for m in &msgs {
                println!("[{code}] {}", m.text);
            }
            if let Some(m) = msgs.last() {
                seen.0.insert(code.to_string(), m.seq);
            }
        }
        let rows: Vec<PackageStatus> = clients[0]
            .1
            .get(&format!("/status?package={package}"))
            .await?;
        let done = rows
            .iter()
            .filter(|r| r.state == "Installed" && r.version == Some(version))
            .count();
        let line =
            format!("{package} v{version}: {done} of {want} DPs Installed (rolled up at the CAS)");
        if line != last_line && !quiet {
            println!("{line}");
            last_line = line;
        }
        if done >= want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Usage(format!(
                "{package} v{version} did not reach {want} DPs in 10 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints a site's Sender outbox.
async fn print_sends(client: &AdminClient, code: &str) -> Result<(), CliError> {
    let rows: serde_json::Value = client.get("/sends").await?;
    println!("{code}'s Sender outbox:");
    print!(
        "{}",
        render::render(render::Show::Sends, rows, &jiff::tz::TimeZone::system())?
    );
    Ok(())
}

/// The sequence number of the newest status message.
async fn newest(client: &AdminClient) -> Result<i64, CliError> {
    let msgs: Vec<StatusMessage> = client.get("/messages").await?;
    Ok(msgs.last().map_or(0, |m| m.seq))
}
