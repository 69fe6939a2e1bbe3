use std::time::Duration;

use super::*;

/// Long enough for inotify and the debounce on a loaded CI machine; a healthy run takes about
/// a tenth of it.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long to wait to be reasonably sure nothing is coming.
const SILENCE: Duration = Duration::from_millis(800);

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: 80\n"
    )
}

fn hostnames(catalog: &Catalog) -> Vec<String> {
    catalog
        .snapshot_for(&Default::default())
        .services
        .into_iter()
        .map(|s| s.hostname)
        .collect()
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    fs::write(path, text).expect("write test file");
}

#[tokio::test]
async fn publishes_a_new_catalog_only_when_contents_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("apps")).expect("mkdir");
    fs::create_dir(root.join(".git")).expect("mkdir");
    write(&root.join("a.yaml"), service("a"));
    write(&root.join("apps/b.yml"), service("b"));
    write(
        &root.join("mesh.yaml"),
        "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
    );
    // Not manifests: ignored.
    write(&root.join(".hidden.yaml"), "not: [yaml");
    write(&root.join(".git/c.yaml"), "not: [yaml");
    write(&root.join("a.yaml~"), "not: [yaml");
    write(&root.join("notes.txt"), "not: [yaml");
    // Not UTF-8: rejected, naming the file.
    write(&root.join("binary.yaml"), [0xff, 0xfe, 0x00]);

    let mut catalogs = Box::new(DirectorySource::new(vec![root.to_owned()]))
        .watch()
        .await
        .expect("directory exists");
    {
        let initial = catalogs.borrow_and_update();
        assert_eq!(
            hostnames(&initial),
            ["a.default.svc.cluster.local", "b.default.svc.cluster.local"]
        );
        let mesh = initial
            .snapshot_for(&Default::default())
            .mesh
            .expect("mesh");
        assert_eq!(mesh.outbound_traffic_policy, "REGISTRY_ONLY");
        assert_eq!(initial.rejected.len(), 1, "{:?}", initial.rejected);
        assert_eq!(
            initial.rejected[0].object,
            root.join("binary.yaml").display().to_string()
        );
        assert!(initial.rejected[0].reason.starts_with("cannot be read"));
    }

    write(&root.join("apps/c.yaml"), service("c"));
    tokio::time::timeout(ARRIVAL, catalogs.changed())
        .await
        .expect("a new catalog arrives")
        .expect("source still running");
    assert_eq!(
        hostnames(&catalogs.borrow_and_update()),
        [
            "a.default.svc.cluster.local",
            "b.default.svc.cluster.local",
            "c.default.svc.cluster.local"
        ]
    );

    write(&root.join("a.yaml"), service("a"));
    write(&root.join("notes.txt"), "changed");
    assert!(
        tokio::time::timeout(SILENCE, catalogs.changed())
            .await
            .is_err(),
        "identical contents published a new catalog"
    );

    fs::remove_file(root.join("a.yaml")).expect("remove");
    tokio::time::timeout(ARRIVAL, catalogs.changed())
        .await
        .expect("a new catalog arrives")
        .expect("source still running");
    assert_eq!(
        hostnames(&catalogs.borrow_and_update()),
        ["b.default.svc.cluster.local", "c.default.svc.cluster.local"]
    );
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let err = Box::new(DirectorySource::new(vec![
        dir.path().to_owned(),
        missing.clone(),
    ]))
    .watch()
    .await
    .expect_err("missing directory");
    assert!(
        matches!(&err, SourceError::Directory { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn needs_a_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut watching = Box::new(DirectorySource::new(vec![dir.path().to_owned()])).watch();
    let polled = watching
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(
        matches!(polled, std::task::Poll::Ready(Err(SourceError::NoRuntime))),
        "{polled:?}"
    );
}

#[test]
fn only_manifests_and_directories_are_changes() {
    use notify::event::{DataChange, RenameMode};
    let dir = tempfile::tempdir().expect("tempdir");
    let existing_dir = dir.path().join("apps");
    fs::create_dir(&existing_dir).expect("mkdir");
    let gone = dir.path().join("gone");
    let event = |kind: EventKind, path: &Path| Ok(Event::new(kind).add_path(path.to_owned()));
    let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
    let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
    let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
    let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Any));
    let yaml = dir.path().join("a.yaml");
    let yml = dir.path().join("b.yml");
    let log = dir.path().join("app.log");
    let swap = dir.path().join(".a.yaml.swp");
    let cases = [
        ("manifest written", event(write, &yaml), true),
        ("manifest closed after writing", event(closed, &yml), true),
        ("manifest opened", event(opened, &yaml), false),
        (
            "manifest created",
            event(EventKind::Create(CreateKind::File), &yaml),
            true,
        ),
        (
            "manifest removed",
            event(EventKind::Remove(RemoveKind::File), &yml),
            true,
        ),
        ("manifest renamed", event(renamed, &yaml), true),
        ("log written", event(write, &log), false),
        ("log closed after writing", event(closed, &log), false),
        (
            "log created",
            event(EventKind::Create(CreateKind::File), &log),
            false,
        ),
        (
            "log removed",
            event(EventKind::Remove(RemoveKind::File), &log),
            false,
        ),
        ("swap file written", event(write, &swap), false),
        (
            "directory created",
            event(EventKind::Create(CreateKind::Folder), &existing_dir),
            true,
        ),
        (
            "directory removed",
            event(EventKind::Remove(RemoveKind::Folder), &gone),
            true,
        ),
        (
            "directory renamed here",
            event(renamed, &existing_dir),
            true,
        ),
        ("something renamed away", event(renamed, &gone), true),
        (
            "created, kind unknown, a directory",
            event(EventKind::Create(CreateKind::Any), &existing_dir),
            true,
        ),
        (
            "watcher error",
            Err(notify::Error::generic("overflow")),
            true,
        ),
    ];
    for (what, event, expected) in cases {
        assert_eq!(is_change(&event), expected, "{what}");
    }
    let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert!(is_change(&Ok(rescan)), "rescan");
}
