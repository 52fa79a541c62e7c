//! Reading manifests from files and directories.

use std::path::{Path, PathBuf};

use weft_api::resources::{
    MAX_FILE_BYTES, Manifest, ManifestError, Source, oversized_file, parse_file,
};

/// Every `*.yaml` and `*.yml` file under `path` (recursively, in name order), or `path`
/// itself when it is a file. `-` reads standard input.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" || path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors' temporary and hidden files are never manifests.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        if p.is_dir() {
            out.extend(manifest_files(&p)?);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
    Ok(out)
}

/// Parses every manifest under `paths`.
pub fn load(paths: &[PathBuf]) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = match manifest_files(path) {
            Ok(files) => files,
            Err(e) => {
                errors.push(unreadable(path, &e));
                continue;
            }
        };
        for file in files {
            let text = if file.as_os_str() == "-" {
                read_bounded(std::io::stdin())
            } else {
                match std::fs::metadata(&file) {
                    Ok(m) if m.len() > MAX_FILE_BYTES => {
                        errors.push(oversized_file(&file.display().to_string(), m.len()));
                        continue;
                    }
                    _ => std::fs::File::open(&file).and_then(read_bounded),
                }
            };
            match text {
                Ok(text) => {
                    let (m, e) = parse_file(&file.display().to_string(), &text);
                    manifests.extend(m);
                    errors.extend(e);
                }
                Err(e) => errors.push(unreadable(&file, &e)),
            }
        }
    }
    (manifests, errors)
}

/// Reads a stream to its end, or to one byte past [`MAX_FILE_BYTES`] (which `parse_file`
/// then refuses): a file that grows while it is read, or standard input, is never read whole
/// into memory beyond the limit.
pub fn read_bounded(stream: impl std::io::Read) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    stream.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    Ok(text)
}

fn unreadable(path: &Path, e: &std::io::Error) -> ManifestError {
    ManifestError {
        origin: Source {
            file: path.display().to_string(),
            document: 0,
        },
        path: String::new(),
        message: format!("cannot read: {e}"),
        subject: weft_api::resources::Subject::Unidentified,
    }
}
