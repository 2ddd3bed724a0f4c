//! The flattening, on layers written here.

use super::*;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
    Char(&'a str),
    Global(&'a str),
}

fn layer(dir: &Path, n: usize, entries: &[E]) -> std::path::PathBuf {
    let path = dir.join(format!("layer{n}.tar"));
    let mut b = tar::Builder::new(File::create(&path).unwrap());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mode(0o755);
        match e {
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::File(p, body) => {
                h.set_size(body.len() as u64);
                h.set_mode(0o4755);
                b.append_data(&mut h, p, body.as_bytes()).unwrap();
            }
            E::Link(p, t) => {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Sym(p, t) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Char(p) => {
                h.set_entry_type(EntryType::Char);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::Global(body) => {
                h.set_entry_type(EntryType::XGlobalHeader);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, "pax_global_header", body.as_bytes())
                    .unwrap();
            }
        }
    }
    b.finish().unwrap();
    path
}

fn flat(layers: &[std::path::PathBuf]) -> (Vec<(String, String)>, Flattened) {
    let refs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let mut out = Vec::new();
    let report = flatten(&refs, &[], &mut out).unwrap();
    let mut listing = Vec::new();
    for e in Archive::new(out.as_slice()).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let what = match e.header().entry_type() {
            EntryType::Directory => "dir".to_string(),
            EntryType::Link => format!("link {}", e.link_name().unwrap().unwrap().display()),
            EntryType::Symlink => format!("sym {}", e.link_name().unwrap().unwrap().display()),
            _ => {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                format!("{s} {:o}", e.header().mode().unwrap())
            }
        };
        listing.push((path, what));
    }
    (listing, report)
}

#[test]
fn upper_layers_win_and_whiteouts_hide() {
    let d = tempfile::tempdir().unwrap();
    let l0 = layer(
        d.path(),
        0,
        &[
            E::Dir("etc/"),
            E::File("etc/a", "old"),
            E::File("etc/gone", "x"),
            E::Dir("opq/"),
            E::File("opq/lower", "x"),
            E::Dir("tree/"),
            E::File("tree/deep", "x"),
        ],
    );
    let l1 = layer(
        d.path(),
        1,
        &[
            E::File("./etc/a", "new"),
            E::File("etc/.wh.gone", ""),
            E::File("opq/upper", "kept"),
            E::File("opq/.wh..wh..opq", ""),
            E::File(".wh.tree", ""),
        ],
    );
    let (listing, report) = flat(&[l0, l1]);
    let names: Vec<&str> = listing.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["etc", "opq", "etc/a", "opq/upper"], "{listing:?}");
    assert_eq!(listing[2].1, "new 4755");
    assert_eq!(listing[3].1, "kept 4755");
    assert!(report.skipped.is_empty());
}

#[test]
fn nothing_is_written_through_a_symlink_or_outside_the_tree() {
    let d = tempfile::tempdir().unwrap();
    let l0 = layer(d.path(), 0, &[E::Sym("etc", "/etc"), E::Char("dev/sda")]);
    let l1 = layer(
        d.path(),
        1,
        &[E::File("etc/passwd", "pwned"), E::File("ok", "fine")],
    );
    let (listing, report) = flat(&[l0, l1]);
    assert_eq!(
        listing,
        [
            ("etc".to_string(), "sym /etc".to_string()),
            ("ok".to_string(), "fine 4755".to_string())
        ]
    );
    assert_eq!(report.skipped, ["dev/sda", "etc/passwd"]);
}

#[test]
fn only_checked_entry_types_reach_the_stream() {
    let d = tempfile::tempdir().unwrap();
    // A global header whose body would be read as the next headers if
    // it were copied as an ordinary entry.
    let l0 = layer(
        d.path(),
        0,
        &[
            E::Global("27 path=dev/evil-override\n"),
            E::Char("dev/null"),
            E::File("ok", "fine"),
        ],
    );
    let (listing, report) = flat(&[l0]);
    assert_eq!(listing, [("ok".to_string(), "fine 4755".to_string())]);
    assert!(
        report.skipped.contains(&"dev/null".to_string()),
        "{report:?}"
    );
}

#[test]
fn hard_links_follow_their_targets_and_a_file_can_replace_a_directory() {
    let d = tempfile::tempdir().unwrap();
    let l0 = layer(
        d.path(),
        0,
        &[
            E::File("bin/tool", "t"),
            E::Link("bin/alias", "bin/tool"),
            E::Dir("was-dir/"),
            E::File("was-dir/child", "c"),
            E::Link("bin/dangling", "bin/missing"),
        ],
    );
    let l1 = layer(d.path(), 1, &[E::File("was-dir", "now a file")]);
    let (listing, report) = flat(&[l0, l1]);
    assert_eq!(
        listing,
        [
            ("bin/tool".to_string(), "t 4755".to_string()),
            ("was-dir".to_string(), "now a file 4755".to_string()),
            ("bin/alias".to_string(), "link bin/tool".to_string()),
        ]
    );
    assert_eq!(report.skipped, ["bin/dangling"]);
}
