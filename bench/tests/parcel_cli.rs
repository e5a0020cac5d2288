//! End-to-end runs of `freight-bench parcel` against stub freight binaries.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{require_peer_tools, stub, temp_dir};

fn bench(work: &Path, freight: &Path, extra: &[&str]) -> Output {
    common::bench("parcel", work, freight, extra)
}

/// Stands in for `freight`: records its arguments, accepts only the argument
/// shapes the benchmark uses, checks the order of the steps through the files
/// they leave behind, and writes stdout noise that must not reach the report.
const STUB: &str = r#"echo "$*" >> "$(dirname "$0")/args"
echo "stub chatter"
quiet=
if [ "$1" = --quiet ]; then quiet=1; shift; fi
case "$1" in
site)
  [ "$2" = --site ] || exit 2
  dir=$3; shift 3
  case "$1 $2" in
  "init --code") [ ! -e "$dir" ] && [ $# = 3 ] || exit 4
    mkdir -p "$dir"; echo "code = \"$3\"" > "$dir/site.toml" ;;
  "identity export") [ -f "$dir/site.toml" ] && [ "$3" = --out ] || exit 5
    cp "$dir/site.toml" "$4" ;;
  "identity import") [ -f "$dir/site.toml" ] && [ -f "$3" ] || exit 6
    cp "$3" "$dir/trusted" ;;
  *) exit 2 ;;
  esac ;;
library)
  [ "$2 $4 $5 $6 $7 $8" = "--library ingest --package CAS00001 --version 1" ] || exit 2
  [ ! -e "$3" ] || exit 7
  mkdir -p "$3"; tar -cf - -C "$9" . | zstd -1 -q > "$3/blob.zst" ;;
parcel)
  [ -n "$quiet" ] && [ "$2" = --site ] && [ "$4" = --library ] || exit 2
  site=$3 lib=$5; shift 5
  case "$1" in
  create) [ "$*" = "create --package CAS00001 --version 1 --to PS1 --out $9" ] || exit 2
    [ -f "$site/site.toml" ] && [ ! -e "$9" ] || exit 8
    cp "$lib/blob.zst" "$9" ;;
  import) [ $# = 2 ] && [ -f "$site/trusted" ] && [ ! -e "$lib" ] || exit 9
    mkdir "$lib"; cp "$2" "$lib/blob.zst" ;;
  *) exit 2 ;;
  esac ;;
*) exit 2 ;;
esac"#;

#[test]
fn parcel_runs_all_steps_and_reports() {
    require_peer_tools();
    let dir = temp_dir();
    let freight = stub(dir.path(), "freight", STUB);
    let work = dir.path().join("work");
    let json = dir.path().join("report.json");
    let out = bench(
        &work,
        &freight,
        &["--runs", "2", "--json", json.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let w = |name: &str| work.join(name).display().to_string();
    let f = freight.display();
    let setup = format!(
        "site --site {a} init --code CAS\n\
         site --site {b} init --code PS1\n\
         site --site {a} identity export --out {id}\n\
         site --site {b} identity import {id} --role parent\n\
         library --library {lib_a} ingest --package CAS00001 --version 1 {src}\n",
        a = w("siteA"),
        b = w("siteB"),
        id = w("CAS.id"),
        lib_a = w("libA"),
        src = w("src"),
    );
    let create = format!(
        "--quiet parcel --site {} --library {} create --package CAS00001 --version 1 --to PS1 --out {}",
        w("siteA"),
        w("libA"),
        w("p.parcel"),
    );
    let import = format!(
        "--quiet parcel --site {} --library {} import {}",
        w("siteB"),
        w("libB"),
        w("p.parcel"),
    );
    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args, setup + &format!("{create}\n{import}\n").repeat(2));

    // The report: exact commands, both tables, sizes and goals; no child output.
    assert!(!stdout.contains("stub chatter"), "{stdout}");
    for expected in [
        format!(
            "setup:          rm -rf {} {} {} {}",
            w("siteA"),
            w("siteB"),
            w("CAS.id"),
            w("libA")
        ),
        format!(
            "setup:          {f} site --site {} init --code CAS",
            w("siteA")
        ),
        format!(
            "peer create:    rm -rf {0}/peer.tar.zst && bash -c 'set -o pipefail; tar -cf - -C \"$1\" src | zstd -1 -T2 -q > \"$1/peer.tar.zst\"' bash {0}",
            work.display()
        ),
        format!("freight create: rm -rf {} && {f} {create}", w("p.parcel")),
        format!(
            "peer import:    rm -rf {0}/peer-out && mkdir {0}/peer-out && bash -c 'set -o pipefail; zstd -dc -q \"$1/peer.tar.zst\" | tar -xf - -C \"$1/peer-out\"' bash {0}",
            work.display()
        ),
        format!("freight import: rm -rf {} && {f} {import}", w("libB")),
        "freight import    2".to_owned(),
        "\ncreate ".to_owned(),
        "\nimport ".to_owned(),
        "sizes: peer.tar.zst ".to_owned(),
        "goal: freight/peer median create throughput >= 3.0x: ".to_owned(),
        "goal: freight/peer median import throughput >= 1.5x: ".to_owned(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} not in\n{stdout}");
    }
    // Two summary tables, one per comparison.
    for row in [
        "best MB/s",
        "median MB/s",
        "max RSS MiB",
        "median CPU s",
        "output bytes",
    ] {
        assert_eq!(
            stdout.matches(&format!("\n{row} ")).count(),
            2,
            "{row}: {stdout}"
        );
    }
    let headers = stdout.matches("  peer  freight  freight/peer\n").count();
    assert_eq!(headers, 2, "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["benchmark"], "parcel");
    let runs = report["runs"].as_array().unwrap();
    let sides: Vec<&str> = runs.iter().map(|r| r["side"].as_str().unwrap()).collect();
    let order = [
        "peer create",
        "freight create",
        "peer import",
        "freight import",
    ];
    assert_eq!(sides, order.repeat(2));
    assert_eq!(report["dataset"]["bytes"], 3 << 20);
    assert_eq!(report["commands"].as_array().unwrap().len(), 6 + 4);
    let peer_archive = report["peer_archive_bytes"].as_u64().unwrap();
    assert!(peer_archive > 0);
    assert_eq!(
        report["parcel_bytes"].as_u64(),
        Some(fs::metadata(work.join("p.parcel")).unwrap().len())
    );
    assert_eq!(report["create"]["peer"]["output_bytes"], peer_archive);
    // The peer's import output is the extracted tree: the whole source.
    assert!(report["import"]["peer"]["output_bytes"].as_u64().unwrap() >= 3 << 20);
    for comparison in ["create", "import"] {
        let c = &report[comparison];
        assert_eq!(c["peer"]["runs"], 2);
        assert_eq!(c["freight"]["runs"], 2);
        assert!(c["ratio_median"].as_f64().unwrap() > 0.0);
        assert!(c["ratio_best"].as_f64().unwrap() > 0.0);
        assert_eq!(report["goals"][comparison]["ratio"], c["ratio_median"]);
        assert!(report["goals"][comparison]["met"].is_boolean());
    }
    assert_eq!(report["goals"]["create"]["ratio_min"], 3.0);
    assert_eq!(report["goals"]["import"]["ratio_min"], 1.5);
    assert!(work.join("peer-out/src").is_dir());
    assert!(work.join("libB/blob.zst").is_file());

    // A second invocation reuses the dataset and starts from fresh sites.
    let out = bench(&work, &freight, &["--runs", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reusing dataset"), "{stderr}");
}

#[test]
fn parcel_fails_when_a_freight_step_fails() {
    require_peer_tools();
    let dir = temp_dir();
    // Import fails; everything before it works.
    let body = STUB.replacen("import) [", "import) exit 3; [", 1);
    assert_ne!(body, STUB);
    let freight = stub(dir.path(), "freight", &body);
    let out = bench(&dir.path().join("work"), &freight, &["--runs", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("freight import run 1/1 failed"), "{stderr}");

    let failing = stub(dir.path(), "failing", "exit 3");
    let out = bench(&dir.path().join("work"), &failing, &["--runs", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("setup command"), "{stderr}");
    assert!(stderr.contains("init --code CAS` failed"), "{stderr}");
}
