//! The site server's commands as calls of `freightd`'s admin API on its Unix socket: the
//! connection options every such command takes ([`Conn`]), one [`Call`] per command (method,
//! path, JSON body) and how its answer is shown ([`render::Show`]); `--json` prints the answer
//! as the API sent it. The commands themselves are one module per noun: [`super::dp`],
//! [`super::dpgroup`], [`super::package`], [`super::distribution`], [`super::status`].

use crate::admin::client::{AdminClient, DEFAULT_SOCKET};
use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::render::{self, Show};
use crate::cli::watch;
use crate::cli::{address, courier, distribution, dp, dpgroup, package, status};
use clap::{Args, Subcommand};
use hyper::Method;
use jiff::tz::TimeZone;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

/// `--admin` and `--json`, accepted by every admin command.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// freightd's admin socket.
    #[arg(long, global = true, env = "FREIGHT_ADMIN", value_name = "SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) admin: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The admin commands, flattened into `freight`'s top-level commands.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Distribution points of this site: add, list, show, remove, bandwidth windows.
    Dp(dp::DpArgs),
    /// Addresses: how this site sends to its child sites (endpoint, sender, weekly
    /// schedule, retries); `show` draws the week.
    Address(address::AddressArgs),
    /// Named sets of DPs, to target many at once.
    Dpgroup(dpgroup::GroupArgs),
    /// Courier parcels for child sites without a network route: list the requests, write
    /// one as a parcel, receive one from the parent.
    Courier(courier::CourierArgs),
    /// The Sender's outbox: package versions sent or queued for child sites.
    Sends(SendsArgs),
    /// Packages: create from a source folder, update, list, show, remove.
    Package(package::PackageArgs),
    /// Send a package to DPs and DP groups (only what each DP lacks travels).
    Distribute(distribution::DistributeArgs),
    /// Send a package to one DP again in full, to repair it.
    Redistribute(distribution::RedistributeArgs),
    /// Have DPs re-hash what they hold of a package and report mismatches.
    Validate(distribution::ValidateArgs),
    /// Package status per DP; without a package also the DP counts of every package.
    Status(status::StatusArgs),
    /// Status messages, oldest first.
    Messages(status::MessagesArgs),
    /// Live progress bars of running copies, and new status messages as they arrive.
    Watch(status::WatchArgs),
}

/// Arguments of `freight sends`.
#[derive(Args)]
pub struct SendsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
}

/// One API call and how to show its answer.
#[derive(Debug, PartialEq)]
pub(crate) struct Call {
    method: Method,
    /// Below the API prefix, segments and query encoded.
    path: String,
    body: Option<Value>,
    show: Show,
}

impl Call {
    pub(crate) fn new(method: Method, path: String, show: Show) -> Call {
        Call {
            method,
            path,
            body: None,
            show,
        }
    }
    pub(crate) fn body<T: serde::Serialize>(mut self, body: &T) -> Result<Call, CliError> {
        self.body = Some(serde_json::to_value(body).map_err(|e| CliError::Usage(e.to_string()))?);
        Ok(self)
    }
    /// Makes the call; the answer decoded as `T`.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        client: &AdminClient,
    ) -> Result<T, CliError> {
        client
            .send(self.method.clone(), &self.path, self.body.as_ref())
            .await
            .map_err(CliError::from)
    }
}

/// Runs one admin command; `quiet` hides `watch`'s bars.
pub fn run(cmd: AdminCmd, quiet: bool) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(run_async(cmd, quiet))
}

async fn run_async(cmd: AdminCmd, quiet: bool) -> Result<(), CliError> {
    let (conn, call) = match cmd {
        AdminCmd::Dp(a) => (a.conn, dp::dp_call(a.cmd, dp::read_identity)?),
        AdminCmd::Dpgroup(a) => (a.conn, dpgroup::group_call(a.cmd)?),
        AdminCmd::Courier(a) => (a.conn, courier::courier_call(a.cmd)?),
        AdminCmd::Sends(a) => (a.conn, Call::new(Method::GET, "/sends".into(), Show::Sends)),
        AdminCmd::Address(a) => (
            a.conn,
            address::address_call(a.cmd, address::read_schedule_file)?,
        ),
        AdminCmd::Package(a) => (a.conn, package::package_call(a.cmd)?),
        AdminCmd::Distribute(a) => (
            a.conn,
            distribution::targets_call("distribute", &a.id, a.dps, a.groups, a.sites)?,
        ),
        AdminCmd::Redistribute(a) => (
            a.conn,
            distribution::targets_call("redistribute", &a.id, vec![a.dp], vec![], vec![])?,
        ),
        AdminCmd::Validate(a) => (
            a.conn,
            distribution::targets_call("validate", &a.id, a.dps, vec![], vec![])?,
        ),
        AdminCmd::Status(a) => return status::status(a).await,
        AdminCmd::Messages(a) => return status::messages(a).await,
        AdminCmd::Watch(a) => {
            let client = AdminClient::new(a.conn.admin);
            let opts = watch::WatchOpts {
                package: a.id,
                until_settled: a.until_settled,
                interval: a.interval,
                timeout: a.timeout,
                json: a.conn.json,
                quiet,
                since: None,
            };
            return watch::run(&client, opts).await;
        }
    };
    show(conn, call).await
}

/// Runs one call made elsewhere (`freight site`'s hierarchy verbs) and shows its answer.
pub(crate) fn run_call(conn: Conn, call: Call) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(show(conn, call))
}

/// Makes `call` and prints its answer: JSON with `--json`, else its human view.
async fn show(conn: Conn, call: Call) -> Result<(), CliError> {
    let answer: Value = call.send(&AdminClient::new(conn.admin)).await?;
    if conn.json {
        print_json(&answer)
    } else {
        print!(
            "{}",
            render::render(call.show, answer, &TimeZone::system())?
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    /// Just the admin commands, parsed as `freight` parses them.
    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: AdminCmd,
    }

    fn parse(args: &[&str]) -> AdminCmd {
        T::try_parse_from(std::iter::once("freight").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    /// The call `args` makes (dp add reads the identity "ID-TEXT" from any file).
    fn call(args: &[&str]) -> (Conn, Call) {
        match parse(args) {
            AdminCmd::Dp(a) => (
                a.conn,
                dp::dp_call(a.cmd, |_| Ok("ID-TEXT".into())).unwrap(),
            ),
            AdminCmd::Dpgroup(a) => (a.conn, dpgroup::group_call(a.cmd).unwrap()),
            AdminCmd::Courier(a) => (a.conn, courier::courier_call(a.cmd).unwrap()),
            AdminCmd::Sends(a) => (a.conn, Call::new(Method::GET, "/sends".into(), Show::Sends)),
            AdminCmd::Address(a) => (
                a.conn,
                address::address_call(a.cmd, |_| Ok("TOML".into())).unwrap(),
            ),
            AdminCmd::Package(a) => (a.conn, package::package_call(a.cmd).unwrap()),
            AdminCmd::Distribute(a) => (
                a.conn,
                distribution::targets_call("distribute", &a.id, a.dps, a.groups, a.sites).unwrap(),
            ),
            AdminCmd::Redistribute(a) => (
                a.conn,
                distribution::targets_call("redistribute", &a.id, vec![a.dp], vec![], vec![])
                    .unwrap(),
            ),
            AdminCmd::Validate(a) => (
                a.conn,
                distribution::targets_call("validate", &a.id, a.dps, vec![], vec![]).unwrap(),
            ),
            _ => panic!("{args:?} is not a single call"),
        }
    }

    fn check(args: &[&str], method: Method, path: &str, body: Option<Value>) {
        let (_, c) = call(args);
        assert_eq!(
            (c.method, c.path.as_str(), c.body),
            (method, path, body),
            "{args:?}"
        );
    }

    #[test]
    fn dp_commands_map_to_their_calls() {
        check(
            &[
                "dp",
                "add",
                "dp1",
                "--address",
                "10.0.0.5:4433",
                "--identity",
                "/x.id",
            ],
            Method::POST,
            "/dps",
            Some(
                json!({"name": "dp1", "kind": "standard", "address": "10.0.0.5:4433",
                "http": null, "identity": "ID-TEXT", "sources": [], "throttle": null}),
            ),
        );
        check(
            &[
                "dp",
                "add",
                "br",
                "--address",
                "h:1",
                "--identity",
                "f",
                "--http",
                "h:80",
                "--pull",
                "--source",
                "dp1",
                "--source",
                "dp2,dp3",
                "--throttle",
                "closed",
            ],
            Method::POST,
            "/dps",
            Some(
                json!({"name": "br", "kind": "pull", "address": "h:1", "http": "h:80",
                "identity": "ID-TEXT", "sources": ["dp1", "dp2", "dp3"], "throttle": "closed"}),
            ),
        );
        check(&["dp", "list"], Method::GET, "/dps", None);
        check(&["dp", "show", "dp 1"], Method::GET, "/dps/dp%201", None);
        check(&["dp", "remove", "dp1"], Method::DELETE, "/dps/dp1", None);
        check(
            &["dp", "schedule", "dp1", "--throttle", "link 1Gbit/s"],
            Method::PUT,
            "/dps/dp1/schedule",
            Some(json!({"throttle": "link 1Gbit/s"})),
        );
        // --source needs --pull; --pull needs a source.
        let add = ["dp", "add", "a", "--address", "h:1", "--identity", "f"];
        let with = |more: &[&'static str]| [&add[..], more].concat();
        assert!(
            T::try_parse_from(std::iter::once("freight").chain(with(&["--source", "b"]))).is_err()
        );
        let AdminCmd::Dp(a) = parse(&with(&["--pull"])) else {
            panic!()
        };
        let e = dp::dp_call(a.cmd, |_| Ok(String::new()))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "pull DP a needs a source; pass --source DP (best first)");
    }

    #[test]
    fn address_commands_map_to_their_calls() {
        check(
            &[
                "address",
                "add",
                "SS1",
                "--endpoint",
                "10.0.0.5:4433",
                "--throttle",
                "Sat-Sun closed",
                "--retries",
                "4",
                "--retry-delay",
                "30s",
            ],
            Method::POST,
            "/addresses",
            Some(
                json!({"site": "SS1", "kind": "standard", "endpoint": "10.0.0.5:4433",
                "schedule": {"text": "Sat-Sun closed", "toml": null}, "retries": 4,
                "retry_delay": "30s", "max_sends": null}),
            ),
        );
        check(
            &[
                "address",
                "add",
                "SS1",
                "--kind",
                "courier",
                "--file",
                "/w.toml",
                "--max-sends",
                "1",
            ],
            Method::POST,
            "/addresses",
            Some(json!({"site": "SS1", "kind": "courier", "endpoint": null,
                "schedule": {"text": null, "toml": "TOML"}, "retries": null,
                "retry_delay": null, "max_sends": 1})),
        );
        check(&["address", "list"], Method::GET, "/addresses", None);
        check(
            &["address", "show", "SS1"],
            Method::GET,
            "/addresses/SS1",
            None,
        );
        check(
            &["address", "show", "SS1", "--kind", "courier"],
            Method::GET,
            "/addresses/SS1?kind=courier",
            None,
        );
        check(
            &["address", "schedule", "SS1", "--file", "/w.toml"],
            Method::PUT,
            "/addresses/SS1/schedule",
            Some(json!({"text": null, "toml": "TOML"})),
        );
        check(
            &["address", "schedule", "SS1", "--throttle", "daily 1MiB/s"],
            Method::PUT,
            "/addresses/SS1/schedule",
            Some(json!({"text": "daily 1MiB/s", "toml": null})),
        );
        check(
            &["address", "remove", "SS1", "--kind", "standard"],
            Method::DELETE,
            "/addresses/SS1?kind=standard",
            None,
        );
        // One form of schedule at a time, one of them for `schedule`, a known kind.
        let both = [
            "address",
            "schedule",
            "SS1",
            "--throttle",
            "x",
            "--file",
            "f",
        ];
        assert!(T::try_parse_from(std::iter::once("freight").chain(both)).is_err());
        let AdminCmd::Address(a) = parse(&["address", "schedule", "SS1"]) else {
            panic!()
        };
        let e = address::address_call(a.cmd, |_| unreachable!("no file given"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "address to SS1: give the schedule: --throttle TEXT or --file FILE (TOML)"
        );
        assert!(
            T::try_parse_from(["freight", "address", "show", "SS1", "--kind", "pigeon"]).is_err()
        );
    }

    #[test]
    fn group_commands_map_to_their_calls() {
        check(
            &["dpgroup", "create", "east", "--dp", "a", "--dp", "b"],
            Method::POST,
            "/dpgroups",
            Some(json!({"name": "east", "members": ["a", "b"]})),
        );
        check(
            &["dpgroup", "add", "east", "c", "d"],
            Method::POST,
            "/dpgroups/east/members",
            Some(json!({"dps": ["c", "d"]})),
        );
        check(
            &["dpgroup", "remove", "east", "c"],
            Method::DELETE,
            "/dpgroups/east/members/c",
            None,
        );
        check(
            &["dpgroup", "delete", "east"],
            Method::DELETE,
            "/dpgroups/east",
            None,
        );
        check(&["dpgroup", "list"], Method::GET, "/dpgroups", None);
    }

    #[test]
    fn package_commands_map_to_their_calls() {
        check(
            &[
                "package",
                "create",
                "--name",
                "tools",
                "--source",
                "/srv/tools",
                "--priority",
                "high",
            ],
            Method::POST,
            "/packages",
            Some(json!({"name": "tools", "source": "/srv/tools", "priority": "high"})),
        );
        let (_, c) = call(&["package", "create", "--name", "t", "--source", "rel/dir"]);
        let want = std::env::current_dir().unwrap().join("rel/dir");
        assert_eq!(
            c.body,
            Some(json!({"name": "t", "source": want.to_str().unwrap(), "priority": null}))
        );
        check(
            &["package", "update", "PS100001"],
            Method::POST,
            "/packages/PS100001/update",
            None,
        );
        check(&["package", "list"], Method::GET, "/packages", None);
        check(
            &["package", "show", "PS100001"],
            Method::GET,
            "/packages/PS100001",
            None,
        );
        check(
            &["package", "remove", "PS100001"],
            Method::DELETE,
            "/packages/PS100001",
            None,
        );
        check(
            &["package", "remove", "PS100001", "--dp", "dp1"],
            Method::DELETE,
            "/packages/PS100001?dp=dp1",
            None,
        );
    }

    #[test]
    fn targeting_commands_map_to_their_calls() {
        check(
            &[
                "distribute",
                "PS100001",
                "--dp",
                "a",
                "--group",
                "east,west",
            ],
            Method::POST,
            "/packages/PS100001/distribute",
            Some(json!({"dps": ["a"], "groups": ["east", "west"]})),
        );
        assert!(T::try_parse_from(["freight", "distribute", "PS100001"]).is_err());
        check(
            &["distribute", "PS100001", "--site", "PS1,SS1"],
            Method::POST,
            "/packages/PS100001/distribute",
            Some(json!({"dps": [], "groups": [], "sites": ["PS1", "SS1"]})),
        );
        check(
            &[
                "courier",
                "create-outgoing",
                "7",
                "--out",
                "/media/x.parcel",
            ],
            Method::POST,
            "/courier/7/outgoing",
            Some(json!({"path": "/media/x.parcel"})),
        );
        check(&["courier", "list"], Method::GET, "/courier", None);
        check(&["sends"], Method::GET, "/sends", None);
        check(
            &["redistribute", "PS100001", "--dp", "a"],
            Method::POST,
            "/packages/PS100001/redistribute",
            Some(json!({"dps": ["a"], "groups": []})),
        );
        assert!(T::try_parse_from(["freight", "redistribute", "PS100001"]).is_err());
        check(
            &["validate", "PS100001"],
            Method::POST,
            "/packages/PS100001/validate",
            Some(json!({"dps": [], "groups": []})),
        );
    }

    #[test]
    fn admin_and_json_are_accepted_anywhere() {
        let (conn, _) = call(&["dp", "list"]);
        assert!(!conn.json);
        let (conn, _) = call(&["dp", "--admin", "/s", "list", "--json"]);
        assert_eq!((conn.admin, conn.json), (PathBuf::from("/s"), true));
        let (conn, _) = call(&["distribute", "P", "--dp", "a", "--admin", "/t"]);
        assert_eq!(conn.admin, PathBuf::from("/t"));
        let AdminCmd::Watch(w) = parse(&["watch", "P", "--until-settled", "--interval", "0.1"])
        else {
            panic!()
        };
        assert_eq!(w.interval, std::time::Duration::from_millis(100));
        assert!(T::try_parse_from(["freight", "watch", "--timeout", "5"]).is_err());
    }
}
