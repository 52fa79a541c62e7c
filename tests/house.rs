//! The house rules, checked on the source tree of every crate in the workspace:
//!
//! - no import circles between files: a file that uses another, directly or through others,
//!   is never used back by it, and a parent module and its own submodule count as two files;
//! - a crate whose root lists its layers (`# Layers` in its `//!` docs, numbered from the top,
//!   each naming its modules in backticks) has every top-level module in exactly one layer,
//!   and no module uses a module of a higher layer;
//! - no file has more than [`MAX_LINES`] lines outside its `#[cfg(test)]` modules;
//! - no `#[path]` attribute: a file belongs to one crate, where its module tree puts it.
//!
//! A file "uses" another when it names an item of it: in a `use` declaration, or in a path
//! (`crate::http::body::Body`, `super::Limits`, `h1::send` after `mod h1;`). Unit tests inside
//! a file count: a test that needs a higher layer belongs there.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a failed expectation is reported"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a file may have outside its `#[cfg(test)]` modules.
const MAX_LINES: usize = 800;

#[test]
fn the_house_has_no_circles_and_keeps_its_layers() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for member in ["crates/api", "crates/proxy", "control-plane", "tests"] {
        let dir = workspace.join(member);
        for (root, krate, test) in crate_roots(&dir) {
            let tree = Tree::read(&root, &krate, test);
            checked += tree.files.len();
            problems.extend(tree.problems());
        }
    }
    assert!(
        checked > 100,
        "only {checked} files found: is the walk broken?"
    );
    assert!(
        problems.is_empty(),
        "the house rules are broken:\n  {}",
        problems.join("\n  ")
    );
}

/// The guard itself: a circle, an upward import, an unplaced module and a long file, each
/// written into a scratch crate, are each reported.
#[test]
fn the_guard_finds_what_it_is_for() {
    let dir = std::env::temp_dir().join(format!("weft-house-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "//! A crate.\n//!\n//! # Layers\n//! 1. top: [`app`]\n//! 2. bottom: [`io`], [`net`]\n\
         pub mod app;\npub mod io;\npub mod net;\npub mod stray;\n",
    );
    write("app.rs", "pub fn run() {}\n");
    // io and net use each other: a circle within a layer; net also uses app, a higher layer.
    write(
        "io.rs",
        "use crate::net::Dial;\npub struct Conn;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    write(
        "net.rs",
        &format!(
            "pub struct Dial(crate::io::Conn);\nfn f() {{ let _ = crate::app::run; }}\n{}",
            "// filler\n".repeat(MAX_LINES)
        ),
    );
    // A parent and its submodule that use each other.
    write(
        "stray.rs",
        "mod child;\nuse child::Thing;\npub struct Parent;\n",
    );
    write("stray/child.rs", "pub struct Thing(super::Parent);\n");
    let problems = Tree::read(&dir.join("lib.rs"), "scratch", false).problems();
    std::fs::remove_dir_all(&dir).unwrap();
    let all = problems.join("\n");
    assert!(all.contains("import circle: io -> net -> io"), "{all}");
    assert!(
        all.contains("import circle: stray -> stray/child -> stray"),
        "{all}"
    );
    assert!(
        all.contains("net (layer 2) uses app (layer 1)"),
        "an upward import: {all}"
    );
    assert!(all.contains("stray is in no layer"), "{all}");
    assert!(all.contains("net.rs has 802 lines"), "{all}");
    assert!(
        !all.contains("io.rs has"),
        "test modules do not count: {all}"
    );
}

/// The crate roots of a workspace member, with the name its files use for the crate itself,
/// and whether the root is a test target (`[[test]]`), all of whose code is test code.
fn crate_roots(dir: &Path) -> Vec<(PathBuf, String, bool)> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .replace('-', "_");
    let mut roots = BTreeMap::new();
    for default in ["src/lib.rs", "src/main.rs"] {
        if dir.join(default).exists() {
            roots.insert(dir.join(default), false);
        }
    }
    let mut section = "";
    for line in manifest.lines() {
        if line.starts_with('[') {
            section = line;
        }
        if let Some(path) = line
            .strip_prefix("path = \"")
            .and_then(|l| l.strip_suffix('"'))
            && path.ends_with(".rs")
        {
            roots.insert(dir.join(path), section == "[[test]]");
        }
    }
    if let Ok(benches) = std::fs::read_dir(dir.join("benches")) {
        for entry in benches.flatten() {
            roots.insert(entry.path(), false);
        }
    }
    roots
        .into_iter()
        .map(|(r, test)| (r, name.clone(), test))
        .collect()
}

/// One crate's files, by module path, and what each uses.
struct Tree {
    root: PathBuf,
    /// Module path (`["http", "server"]`) to its file. The root is `[]`.
    files: BTreeMap<Vec<String>, File>,
}

struct File {
    path: PathBuf,
    /// Declared under `#[cfg(test)]`, or inside a file so declared.
    test: bool,
    /// The files it uses, by module path.
    uses: BTreeSet<Vec<String>>,
    /// Its lines outside `#[cfg(test)]` modules.
    lines: usize,
    /// Its `#[path]` attributes.
    path_attributes: usize,
    /// The `//!` docs of the file.
    docs: String,
}

impl Tree {
    /// The tree of the crate rooted at `root`, which its own files call `krate`; all of it
    /// test code when `test`.
    fn read(root: &Path, krate: &str, test: bool) -> Tree {
        let mut tree = Tree {
            root: root.to_owned(),
            files: BTreeMap::new(),
        };
        let mut parsed = BTreeMap::new();
        // The module tree, breadth first from the root.
        let mut pending = vec![(Vec::new(), root.to_owned(), test)];
        while let Some((module, path, test)) = pending.pop() {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let source = Source::parse(&text);
            let dir = if module.is_empty() || path.file_name().is_some_and(|n| n == "mod.rs") {
                path.parent().unwrap().to_owned()
            } else {
                path.with_extension("")
            };
            for declared in &source.modules {
                if declared.inline_in.is_some() {
                    continue;
                }
                let file = [
                    dir.join(format!("{}.rs", declared.name)),
                    dir.join(&declared.name).join("mod.rs"),
                ]
                .into_iter()
                .find(|p| p.exists());
                let Some(file) = file else { continue };
                let mut child = module.clone();
                child.push(declared.name.clone());
                pending.push((child, file, test || declared.test));
            }
            tree.files.insert(
                module.clone(),
                File {
                    path,
                    test,
                    uses: BTreeSet::new(),
                    lines: source.lines_outside_tests,
                    path_attributes: source.path_attributes,
                    docs: source.docs.clone(),
                },
            );
            parsed.insert(module, source);
        }
        let modules: BTreeSet<Vec<String>> = tree.files.keys().cloned().collect();
        for (module, source) in &parsed {
            let uses = source.resolve(module, krate, &modules);
            tree.files.get_mut(module).unwrap().uses = uses;
        }
        tree
    }

    fn name(module: &[String]) -> String {
        if module.is_empty() {
            "the crate root".to_owned()
        } else {
            module.join("/")
        }
    }

    fn problems(&self) -> Vec<String> {
        let label = self.root.display();
        let mut out = Vec::new();
        for circle in self.circles() {
            let mut names: Vec<String> = circle.iter().map(|m| Tree::name(m)).collect();
            names.push(names[0].clone());
            out.push(format!("{label}: import circle: {}", names.join(" -> ")));
        }
        out.extend(self.layer_problems());
        for (module, file) in &self.files {
            if !file.test && file.lines > MAX_LINES {
                let name = file.path.file_name().unwrap().to_string_lossy();
                out.push(format!(
                    "{}: {} has {} lines outside its tests (at most {MAX_LINES})",
                    label,
                    if module.is_empty() {
                        name.into_owned()
                    } else {
                        format!("{}.rs", module.join("/"))
                    },
                    file.lines
                ));
            }
            if file.path_attributes > 0 {
                out.push(format!(
                    "{}: a #[path] attribute (a file belongs to its own crate)",
                    file.path.display()
                ));
            }
        }
        out
    }

    /// Every strongly connected set of two or more files, each as the circle through it.
    fn circles(&self) -> Vec<Vec<Vec<String>>> {
        let nodes: Vec<&Vec<String>> = self.files.keys().collect();
        let index: BTreeMap<&Vec<String>, usize> =
            nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        let edges: Vec<Vec<usize>> = nodes
            .iter()
            .map(|m| {
                self.files[*m]
                    .uses
                    .iter()
                    .filter_map(|u| index.get(u).copied())
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        for component in strongly_connected(&edges) {
            if component.len() < 2 {
                continue;
            }
            // A shortest circle through the component's first file, to name it plainly.
            let members: BTreeSet<usize> = component.iter().copied().collect();
            let start = *members.iter().next().unwrap();
            let mut parent = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut found = None;
            while let Some(n) = queue.pop_front() {
                for &m in &edges[n] {
                    if !members.contains(&m) {
                        continue;
                    }
                    if m == start {
                        found = Some(n);
                        break;
                    }
                    if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(m) {
                        e.insert(n);
                        queue.push_back(m);
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            let mut path = Vec::new();
            let mut at = found.unwrap();
            while at != start {
                path.push(at);
                at = parent[&at];
            }
            path.push(start);
            path.reverse();
            out.push(path.into_iter().map(|i| nodes[i].clone()).collect());
        }
        out
    }

    fn layer_problems(&self) -> Vec<String> {
        let label = self.root.display();
        let Some(root) = self.files.get(&Vec::new()) else {
            return Vec::new();
        };
        let Some(layers) = layers(&root.docs) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut layer_of: BTreeMap<String, usize> = BTreeMap::new();
        for (n, modules) in &layers {
            for m in modules {
                if layer_of.insert(m.clone(), *n).is_some() {
                    out.push(format!("{label}: {m} is in two layers"));
                }
                if !self.files.contains_key(std::slice::from_ref(m)) {
                    out.push(format!("{label}: layer {n} names {m}, which is no module"));
                }
            }
        }
        for (module, file) in &self.files {
            if module.len() == 1 && !file.test && !layer_of.contains_key(&module[0]) {
                out.push(format!("{label}: {} is in no layer", module[0]));
            }
        }
        for (module, file) in &self.files {
            let Some(from) = module.first() else { continue };
            let Some(&from_layer) = layer_of.get(from) else {
                continue;
            };
            for used in &file.uses {
                let Some(to) = used.first() else { continue };
                if to == from {
                    continue;
                }
                if let Some(&to_layer) = layer_of.get(to)
                    && to_layer < from_layer
                {
                    out.push(format!(
                        "{label}: {from} (layer {from_layer}) uses {to} (layer {to_layer}): {} -> {}",
                        Tree::name(module),
                        Tree::name(used),
                    ));
                }
            }
        }
        out
    }
}

/// The `# Layers` section of a crate root's docs: each numbered item's modules, in the
/// order the list gives them (1 is the top).
fn layers(docs: &str) -> Option<Vec<(usize, Vec<String>)>> {
    let section = docs.split("# Layers").nth(1)?;
    let section = section.split("\n# ").next().unwrap_or(section);
    let mut out: Vec<(usize, Vec<String>)> = Vec::new();
    for line in section.lines() {
        let trimmed = line.trim_start();
        let number = trimmed
            .split_once(". ")
            .and_then(|(n, _)| n.parse::<usize>().ok());
        match number {
            Some(n) => out.push((n, Vec::new())),
            // A continuation line of the item above (indented), or prose that ends the list.
            None if line.starts_with("   ") && !out.is_empty() => {}
            None => {
                if !out.is_empty() && !trimmed.is_empty() {
                    break;
                }
                continue;
            }
        }
        let names = out.last_mut().unwrap();
        let mut rest = trimmed;
        while let Some(start) = rest.find("[`") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("`]") else { break };
            names.1.push(after[..end].to_owned());
            rest = &after[end + 2..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Tarjan's algorithm: the strongly connected components of a graph.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            s.out.push(component);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A `mod` declaration.
struct Declared {
    name: String,
    /// Under `#[cfg(test)]`.
    test: bool,
    /// For a `mod name { ... }` written inline: where its body starts and ends (in the
    /// stripped text).
    inline_in: Option<(usize, usize)>,
}

/// One file, with comments, strings and character literals blanked out.
struct Source {
    /// The text with comments and literals replaced by spaces (offsets unchanged).
    code: String,
    docs: String,
    modules: Vec<Declared>,
    lines_outside_tests: usize,
    path_attributes: usize,
}

impl Source {
    fn parse(text: &str) -> Source {
        let code = strip(text);
        let docs: String = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let modules = declared_modules(&code);
        let mut test_lines = BTreeSet::new();
        for m in &modules {
            if let (true, Some((start, end))) = (m.test, m.inline_in) {
                let first = code[..start].matches('\n').count();
                let last = code[..end].matches('\n').count();
                test_lines.extend(first..=last);
            }
        }
        let lines_outside_tests = text
            .lines()
            .enumerate()
            .filter(|(i, _)| !test_lines.contains(i))
            .count();
        let path_attributes = code.matches("#[path").count();
        Source {
            code,
            docs,
            modules,
            lines_outside_tests,
            path_attributes,
        }
    }

    /// The files of `modules` this file (module `here` of crate `krate`) uses.
    fn resolve(
        &self,
        here: &[String],
        krate: &str,
        modules: &BTreeSet<Vec<String>>,
    ) -> BTreeSet<Vec<String>> {
        let file_children: BTreeSet<&str> = self
            .modules
            .iter()
            .filter(|m| m.inline_in.is_none())
            .map(|m| m.name.as_str())
            .collect();
        let mut out = BTreeSet::new();
        for (at, path) in paths(&self.code) {
            // Inside inline modules, `self` and `super` start from there.
            let inline: Vec<&str> = self
                .modules
                .iter()
                .filter(|m| m.inline_in.is_some_and(|(s, e)| s <= at && at < e))
                .map(|m| m.name.as_str())
                .collect();
            let mut full: Vec<String> = here.to_vec();
            full.extend(inline.iter().map(|s| (*s).to_owned()));
            let depth_inline = inline.len();
            let resolved: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                first if first == krate => continue,
                "self" | "super" => {
                    let mut base = full.clone();
                    let mut rest = &path[..];
                    while let Some(seg) = rest.first() {
                        match seg.as_str() {
                            "self" => {}
                            "super" => {
                                base.pop();
                            }
                            _ => break,
                        }
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                first if depth_inline == 0 && file_children.contains(first) => {
                    let mut p = here.to_vec();
                    p.extend(path.iter().cloned());
                    p
                }
                _ => continue,
            };
            // An inline module's path is not a file: strip what is not one.
            let target = (0..=resolved.len())
                .rev()
                .map(|k| resolved[..k].to_vec())
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            if target != here {
                out.insert(target);
            }
        }
        out
    }
}

/// Replaces comments, string and character literals with spaces, keeping every offset and
/// line. (`'a` lifetimes stay.)
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let ident_before = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < bytes.len() {
                if bytes[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if bytes[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !ident_before
            && (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br"))
            && raw_string_end(rest).is_some()
        {
            let end = i + raw_string_end(rest).unwrap_or(0);
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(bytes.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'\'' {
            // A character literal: 'x', '\n', '\'', '\u{..}'; otherwise a lifetime.
            let end = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|b| *b == b'\'').map(|p| p + 3)
            } else {
                let c = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + c) == Some(&b'\'')).then_some(c + 2)
            };
            match end {
                Some(n) => {
                    blank(&mut out, i, i + n);
                    i += n;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The length of a raw string literal (`r"..."`, `r#"..."#`, `br"..."`) at the start of
/// `rest`, if one is there.
fn raw_string_end(rest: &[u8]) -> Option<usize> {
    let start = if rest.starts_with(b"br") { 2 } else { 1 };
    let hashes = rest[start..].iter().take_while(|b| **b == b'#').count();
    if rest.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let body = start + hashes + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    rest[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map(|p| body + p + close.len())
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The `mod` declarations of a file, with whether each is under `#[cfg(test)]`.
fn declared_modules(code: &str) -> Vec<Declared> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(found) = code[search..].find("mod ") {
        let at = search + found;
        search = at + 4;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let name: String = code[at + 4..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let after_name = at + 4 + code[at + 4..].find(&name).unwrap_or(0) + name.len();
        let next = code[after_name..].trim_start().chars().next();
        // The attributes and visibility before it, back to the previous item.
        let before = &code[..at];
        let item_start = before.rfind([';', '}', '{']).map_or(0, |p| p + 1);
        let test = before[item_start..].contains("#[cfg(test)]");
        let inline_in = match next {
            Some(';') => None,
            Some('{') => {
                let open = after_name + code[after_name..].find('{').unwrap_or(0);
                let mut depth = 0;
                let mut end = bytes.len();
                for (i, b) in bytes.iter().enumerate().skip(open) {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                Some((open, end))
            }
            _ => continue,
        };
        out.push(Declared {
            name,
            test,
            inline_in,
        });
    }
    out
}

/// Every path of two or more segments in the code (`a::b::c`), and every path a `use`
/// declaration names (its trees expanded), with where it starts.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    // `use` declarations first; their text is then skipped by the path scan.
    let mut in_use = Vec::new();
    let mut search = 0;
    while let Some(found) = code[search..].find("use ") {
        let at = search + found;
        search = at + 4;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let Some(end) = code[at..].find(';').map(|e| at + e) else {
            break;
        };
        let tree = normalize(&code[at + 4..end]);
        for path in expand(&tree) {
            if !path.is_empty() {
                out.push((at, path));
            }
        }
        in_use.push((at, end));
    }
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&(_, end)) = in_use.iter().find(|(s, _)| *s == i) {
            i = end;
            continue;
        }
        let starts = is_ident(bytes[i])
            && !bytes[i].is_ascii_digit()
            && (i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            segments.push(code[s..j].to_owned());
            let mut k = j;
            while k < bytes.len() && bytes[k] == b' ' {
                k += 1;
            }
            if code[k..].starts_with("::") {
                k += 2;
                while k < bytes.len() && bytes[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k < bytes.len() && is_ident(bytes[k]) {
                    j = k;
                    continue;
                }
            }
            break;
        }
        if segments.len() > 1 {
            out.push((i, segments));
        }
        i = j.max(i + 1);
    }
    out
}

/// A `use` tree with no whitespace but the single spaces around `as`.
fn normalize(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 && (*w == "as" || words[i - 1] == "as") {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The paths of a `use` tree (`a::{b, c::{d, e as f}}`), as [`normalize`] leaves it.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let path = path.strip_prefix("::").unwrap_or(path);
        return vec![
            path.split("::")
                .filter(|s| !s.is_empty() && *s != "*")
                .map(str::to_owned)
                .collect(),
        ];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    let mut out = Vec::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        for mut path in expand(part) {
            if path.first().is_some_and(|s| s == "self") {
                path.remove(0);
            }
            let mut full = prefix.clone();
            full.extend(path);
            out.push(full);
        }
    }
    if out.is_empty() {
        out.push(prefix);
    }
    out
}
