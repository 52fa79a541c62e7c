//! Watching the manifest directory.
//!
//! A file is read when its writer closes it, or when it is renamed into place (what editors
//! and `kubectl`-style tools do): never while it is being written. Events are gathered for a
//! short quiet period, so that a burst of writes is one reload. A full rescan every 30
//! seconds catches anything the kernel's event queue dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::load::manifest_files;
use crate::store::Store;

/// How long events are gathered after the first one.
const QUIET: Duration = Duration::from_millis(20);
/// How long a burst may delay a reload at most.
const MAX_DELAY: Duration = Duration::from_millis(200);
const RESCAN: Duration = Duration::from_secs(30);

/// Loads every manifest under `dir` into the store and publishes the result.
pub fn load_all(dir: &Path, store: &mut Store, hub: &Hub) -> std::io::Result<()> {
    let on_disk: BTreeSet<String> = manifest_files(dir)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let gone: Vec<String> = store
        .files()
        .filter(|f| !on_disk.contains(*f))
        .map(str::to_owned)
        .collect();
    let mut changed = false;
    for file in gone {
        changed |= store.set_file(&file, None);
    }
    for file in &on_disk {
        changed |= read_into(store, Path::new(file));
    }
    publish(store, hub, changed || store.generation() == 0);
    Ok(())
}

fn read_into(store: &mut Store, path: &Path) -> bool {
    let name = path.display().to_string();
    if let Ok(m) = std::fs::metadata(path)
        && m.len() > weft_api::resources::MAX_FILE_BYTES
    {
        // Not read at all; what the file held before keeps serving.
        tracing::warn!(file = %name, bytes = m.len(), "a manifest file is too large; keeping what it held");
        return store.refuse_file(&name, weft_api::resources::oversized_file(&name, m.len()));
    }
    match std::fs::File::open(path).and_then(crate::load::read_bounded) {
        Ok(text) => store.set_file(&name, Some(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => store.set_file(&name, None),
        Err(e) => {
            tracing::warn!(file = %name, error = %e, "cannot read a manifest file; keeping what it held");
            false
        }
    }
}

pub(crate) fn publish(store: &mut Store, hub: &Hub, changed: bool) {
    hub.metrics.reload(changed);
    if !changed {
        return;
    }
    let started = std::time::Instant::now();
    let summary = store.rebuild();
    tracing::info!(
        generation = summary.generation,
        accepted = summary.accepted,
        errors = summary.errors,
        "manifests loaded"
    );
    for e in store.errors().iter() {
        tracing::warn!(error = %e, "manifest rejected");
    }
    for e in store.unresolved().iter() {
        tracing::warn!(error = %e, "a route's reference names nothing; the route serves without it");
    }
    hub.publish(
        summary.generation,
        store.accepted(),
        store.errors(),
        store.unresolved(),
    );
    hub.metrics.reconciled(started.elapsed());
}

fn is_manifest(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Watches `dir` until `shutdown`, keeping the store and the hub current.
pub async fn run(
    dir: PathBuf,
    mut store: Store,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    // Anything written between the first load and the watch starting is caught here.
    if let Err(e) = load_all(&dir, &mut store, &hub) {
        tracing::warn!(dir = %dir.display(), error = %e, "rescan failed");
    }
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.tick().await;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = rescan.tick() => {
                if let Err(e) = load_all(&dir, &mut store, &hub) {
                    tracing::warn!(dir = %dir.display(), error = %e, "rescan failed");
                }
                continue;
            }
            event = rx.recv() => match event {
                Some(e) => e,
                None => return Ok(()),
            },
        };
        let mut dirty = BTreeSet::new();
        let mut rescan_all = false;
        collect(first, &mut dirty, &mut rescan_all);
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        while let Ok(Some(event)) =
            tokio::time::timeout(QUIET.min(deadline - tokio::time::Instant::now()), rx.recv()).await
        {
            collect(event, &mut dirty, &mut rescan_all);
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        if rescan_all {
            if let Err(e) = load_all(&dir, &mut store, &hub) {
                tracing::warn!(dir = %dir.display(), error = %e, "rescan failed");
            }
            continue;
        }
        let mut changed = false;
        for path in dirty {
            changed |= read_into(&mut store, &path);
        }
        publish(&mut store, &hub, changed);
    }
}

/// Notes which files an event touched. Writes in progress are ignored: the close that ends
/// them is the signal.
fn collect(
    event: notify::Result<notify::Event>,
    dirty: &mut BTreeSet<PathBuf>,
    rescan_all: &mut bool,
) {
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "watch error; rescanning");
            *rescan_all = true;
            return;
        }
    };
    if event.need_rescan() {
        *rescan_all = true;
        return;
    }
    let relevant = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => true,
        // A directory that appears or goes may hold many files.
        EventKind::Create(notify::event::CreateKind::Folder) => {
            *rescan_all = true;
            false
        }
        _ => false,
    };
    if !relevant {
        return;
    }
    for path in event.paths {
        if is_manifest(&path) {
            dirty.insert(path);
        } else if !path.exists() || path.is_dir() {
            // A directory moved or removed: its files went with it.
            *rescan_all = true;
        }
    }
}
