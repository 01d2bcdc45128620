//! Finding `.slt` files under the test roots.

use std::path::{Path, PathBuf};

use crate::runner::RunnerError;

/// One discovered `.slt` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SltFile {
    /// Path relative to its root, `/`-separated (the file name if the root
    /// is the file itself).
    pub relative: String,
    /// Path to open.
    pub path: PathBuf,
}

/// All `.slt` files under `root` (or `root` itself if it is a file), sorted
/// by relative path.
pub fn discover(root: &Path) -> Result<Vec<SltFile>, RunnerError> {
    let metadata = std::fs::metadata(root).map_err(|source| RunnerError::Discover {
        path: root.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    if metadata.is_file() {
        let relative = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push(checked(relative, root.to_owned())?);
    } else {
        walk(root, "", &mut files)?;
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<SltFile>) -> Result<(), RunnerError> {
    let discover_error = |source| RunnerError::Discover {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(discover_error)? {
        let entry = entry.map_err(discover_error)?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{prefix}{name}");
        // `metadata` follows symlinks, so linked directories are searched too.
        let metadata = std::fs::metadata(&path).map_err(|source| RunnerError::Discover {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            walk(&path, &format!("{relative}/"), files)?;
        } else if path.extension().is_some_and(|e| e == "slt") {
            files.push(checked(relative, path)?);
        }
    }
    Ok(())
}

/// sqllogictest needs UTF-8 paths (it panics on others), so reject them here.
fn checked(relative: String, path: PathBuf) -> Result<SltFile, RunnerError> {
    if path.to_str().is_none() {
        return Err(RunnerError::NonUtf8Path { path });
    }
    Ok(SltFile { relative, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_slt_files_recursively_and_sorted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        for (path, text) in [
            ("b.slt", ""),
            ("a/z.slt", ""),
            ("a/c/d.slt", ""),
            ("a/readme.md", ""),
            ("a/data.csv", ""),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(root))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        }
        let names: Vec<String> = discover(root)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(names, vec!["a/c/d.slt", "a/z.slt", "b.slt"]);

        let single = discover(&root.join("a/z.slt")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].relative, "z.slt");
    }

    #[test]
    fn missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = discover(&dir.path().join("nope")).map(|_| ());
        assert!(matches!(err, Err(RunnerError::Discover { .. })));
    }
}
