//! `overseer crd` prints exactly the committed `config/crd/bases/*.yaml`, in `all_crds()` order.

use std::{path::PathBuf, process::Command};

#[test]
fn crd_output_equals_the_committed_crds() {
    let bases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd/bases");
    let committed: String = overseer_crds::all_crds()
        .iter()
        .map(|crd| {
            let path = bases.join(overseer_crds::crd_file_name(crd));
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        })
        .collect();

    let output = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .arg("crd")
        .env_remove("RUST_LOG")
        .output()
        .expect("overseer runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        printed == committed,
        "`overseer crd` differs from config/crd/bases; run `cargo run -p overseer-crds --bin crdgen`"
    );
    // Every committed file is part of the stream: nothing stale is left in bases/.
    let files = std::fs::read_dir(&bases)
        .expect("bases")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert_eq!(files, overseer_crds::all_crds().len());
}

#[test]
fn bad_invocations_exit_non_zero_with_a_message() {
    for (args, needle) in [
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
        (&["crd", "--bogus"][..], "unexpected argument '--bogus'"),
        (&["--log-format", "xml", "crd"][..], "invalid value 'xml'"),
        (
            &["run", "--lease-duration-seconds", "0"][..],
            "invalid value '0'",
        ),
        // A typo must not look like `check`'s exit 2 ("approval required").
        (
            &["check", "--polcies", "examples/policies"][..],
            "unexpected argument '--polcies'",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_overseer"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("overseer runs");
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn inconsistent_lease_timing_is_rejected_before_connecting() {
    let output = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args([
            "run",
            "--lease-duration-seconds",
            "5",
            "--lease-renew-seconds",
            "6",
        ])
        .env_remove("RUST_LOG")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("overseer runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--lease-renew-seconds (6) must be shorter"),
        "{stderr}"
    );
}
