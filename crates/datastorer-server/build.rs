//! Builds the console (`console/`, TypeScript bundled by esbuild) and
//! embeds its files in the binary, so that `datastorer serve` fetches
//! nothing at run time.
//!
//! The build runs in a copy under `OUT_DIR` (the source tree is never
//! written to), with `npm ci --ignore-scripts` from the committed lockfile.
//! `DATASTORER_CONSOLE_DIST=DIR` embeds a console built elsewhere instead.
//! Where npm is missing or the build fails, the binary gets a page that
//! says how to build the console, and cargo prints a warning: the server
//! itself never fails to build for its console.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the console consists of, with their content types.
const FILES: [(&str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
    ("uplot.css", "text/css; charset=utf-8"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = manifest.join("console");
    for watched in ["src", "package.json", "package-lock.json", "tsconfig.json"] {
        println!("cargo:rerun-if-changed={}", source.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=DATASTORER_CONSOLE_DIST");
    let work = out.join("console-build");
    println!("cargo:rustc-env=DATASTORER_CONSOLE_BUILD_DIR={}", work.display());

    let built = match std::env::var_os("DATASTORER_CONSOLE_DIST") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => build(&source, &work),
    };
    let dist = match built {
        Ok(dist) if FILES.iter().all(|(f, _)| dist.join(f).is_file()) => Some(dist),
        Ok(dist) => {
            println!("cargo:warning=the console's build in {} lacks a file; embedding a placeholder", dist.display());
            None
        }
        Err(why) => {
            println!("cargo:warning=the console was not built ({why}); embedding a placeholder");
            None
        }
    };
    let dist = dist.unwrap_or_else(|| placeholder(&out));
    let mut code = String::from(
        "/// The console's files: name, content type, bytes.\npub(crate) static ASSETS: &[(&str, &str, &[u8])] = &[\n",
    );
    for (name, content_type) in FILES {
        let path = dist.join(name);
        code.push_str(&format!(
            "    ({name:?}, {content_type:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("console_assets.rs"), code).expect("write console_assets.rs");
}

/// `npm ci` and `npm run build` in a copy of the console's sources.
fn build(source: &Path, work: &Path) -> Result<PathBuf, String> {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    for file in ["package.json", "package-lock.json", "tsconfig.json"] {
        copy_if_changed(&source.join(file), &work.join(file))?;
    }
    let _ = std::fs::remove_dir_all(work.join("src"));
    copy_dir(&source.join("src"), &work.join("src"))?;
    // Installed again only when the lockfile changed.
    let stamp = work.join("node_modules/.installed-lock");
    let lock = std::fs::read(source.join("package-lock.json")).map_err(|e| e.to_string())?;
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
        run(Command::new(npm).args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]).current_dir(work))?;
        std::fs::write(&stamp, &lock).map_err(|e| e.to_string())?;
    }
    run(Command::new(npm).args(["run", "build"]).current_dir(work))?;
    Ok(work.join("dist"))
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{command:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if std::fs::read(to).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(to, bytes).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A console that says how to build the real one.
fn placeholder(out: &Path) -> PathBuf {
    let dir = out.join("console-placeholder");
    std::fs::create_dir_all(&dir).expect("create the placeholder's directory");
    let page = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>datastorer console</title>\
                <link rel=\"stylesheet\" href=\"/console/app.css\"></head><body><main><h1>The console was not built</h1>\
                <p>This binary was built without npm (or its console build failed). Install Node.js and npm and build \
                the server again; the console's sources are in crates/datastorer-server/console.</p></main></body></html>";
    std::fs::write(dir.join("index.html"), page).expect("write the placeholder");
    std::fs::write(dir.join("app.js"), "").expect("write the placeholder");
    std::fs::write(dir.join("app.css"), "body{font:16px system-ui,sans-serif;margin:2rem}")
        .expect("write the placeholder");
    dir
}
