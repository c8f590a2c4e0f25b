//! Builds the console's front-end assets: `npm ci` of `web/package-lock.json` (asciinema-player
//! from the npm registry) into OUT_DIR, then copies the player's distributed script and style
//! to OUT_DIR/assets, which `src/web/assets.rs` embeds with `include_bytes!`. Nothing built is
//! committed. Runs again only when the lockfile, package.json or this file change. Without npm
//! (or when it fails) the build goes on with a warning and the embedded player is a stub that
//! says it was not built.

use std::path::{Path, PathBuf};
use std::process::Command;

const STUB_JS: &str = "// Penstock was built without npm: the recording player is not included.\n\
window.AsciinemaPlayer = { create: function (src, el) { el.textContent = 'The recording player was not built \
(npm was missing when Penstock was built); download the recording (.cast) instead.'; el.setAttribute('role', 'alert'); } };\n";

fn main() {
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PENSTOCK_NO_NPM");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let assets = out.join("assets");
    std::fs::create_dir_all(&assets).expect("assets folder in OUT_DIR");
    let built = if std::env::var_os("PENSTOCK_NO_NPM").is_some() {
        Err("PENSTOCK_NO_NPM is set".to_string())
    } else {
        npm_build(&out, &assets)
    };
    if let Err(why) = built {
        println!("cargo:warning=console assets not built ({why}); the web replay shows a 'player not built' note");
        std::fs::write(assets.join("asciinema-player.min.js"), STUB_JS).expect("write stub");
        std::fs::write(assets.join("asciinema-player.css"), "/* player not built */\n").expect("write stub");
        std::fs::write(assets.join("BUILT"), "stub\n").expect("write stub");
    }
}

fn npm_build(out: &Path, assets: &Path) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let work = out.join("npm");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), work.join(f)).map_err(|e| format!("cannot copy web/{f}: {e}"))?;
    }
    let status = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&work)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci failed ({status})"));
    }
    let dist = work.join("node_modules/asciinema-player/dist/bundle");
    for (from, to) in
        [("asciinema-player.min.js", "asciinema-player.min.js"), ("asciinema-player.css", "asciinema-player.css")]
    {
        std::fs::copy(dist.join(from), assets.join(to)).map_err(|e| format!("player file {from} missing: {e}"))?;
    }
    std::fs::write(assets.join("BUILT"), "npm\n").map_err(|e| e.to_string())?;
    Ok(())
}
