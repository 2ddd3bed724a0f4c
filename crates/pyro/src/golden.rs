//! Golden files for the serialized surfaces this crate owns (records on
//! disk); they live in `tests/golden/`. `PYRO_BLESS=1` rewrites them.

use std::path::PathBuf;

pub fn check(name: &str, value: &impl serde::Serialize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let mut text = serde_json::to_string_pretty(value).expect("serializes");
    text.push('\n');
    if std::env::var_os("PYRO_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PYRO_BLESS=1 writes it)", path.display()));
    assert_eq!(
        text,
        golden,
        "{} changed; if that is intended, rerun with PYRO_BLESS=1",
        path.display()
    );
}
