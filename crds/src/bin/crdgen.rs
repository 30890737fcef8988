//! Writes every CRD to `config/crd/bases/` (or the directory given as the only argument) and
//! prints the files it wrote.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd/bases"),
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => {
            eprintln!(
                "usage: crdgen [OUTPUT_DIR]\n\nwrites every Overseer CRD as YAML to OUTPUT_DIR (default: config/crd/bases)"
            );
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for crd in overseer_crds::all_crds() {
        let path = dir.join(overseer_crds::crd_file_name(&crd));
        if let Err(e) = std::fs::write(&path, overseer_crds::crd_yaml(&crd)) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}
