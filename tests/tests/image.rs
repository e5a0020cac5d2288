//! Issue 15: the appliance image. `image/test` builds the image, boots a site server and a DP
//! in QEMU on a private network of their own, pairs them, distributes a package and checks it
//! byte for byte over the DP's HTTP, upgrades the site server to a rebuilt image on the same
//! data disk, and boots four VMs with bad input (no seed, a malformed seed, a data disk of a
//! newer Freight, a full data disk). This test runs it and holds it to its 15-minute budget
//! (set for 2 cores with KVM; on a host whose KVM cannot boot a stock kernel, image/run uses
//! TCG and the run measured 539 s on 2 shared cores).

use std::process::Command;
use std::time::{Duration, Instant};

/// The whole run may take this long on 2 cores with KVM (issue 15).
const BUDGET: Duration = Duration::from_secs(15 * 60);

/// Heavy tier: needs root (debootstrap, image file ownership), QEMU, a Debian mirror for the
/// first build's base tree, and takes minutes. `.ci/run` installs the tools.
#[test]
fn heavy_the_appliance_image_pairs_distributes_upgrades_and_refuses_bad_input() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let started = Instant::now();
    // Output is inherited, so the run's steps, sizes, times and the exposure level show in
    // the test's output as they happen.
    let status = Command::new(root.join("image/test"))
        .current_dir(&root)
        .status()
        .expect("image/test could not be started");
    let took = started.elapsed();
    assert!(
        status.success(),
        "image/test failed ({status}) after {took:?}"
    );
    assert!(
        took <= BUDGET,
        "image/test passed but took {took:?}, over its {BUDGET:?} budget"
    );
    println!("image/test passed in {took:?}");
}
