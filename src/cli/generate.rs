//! `tmem generate man|completions OUT_DIR` (hidden): the man pages (clap_mangen) and the
//! bash, zsh and fish completions (clap_complete) of the command line as clap defines it,
//! written at package time by `scripts/package.sh`, so they never drift from the binary.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::args::{Cli, Generated};

/// Writes `what` into `out_dir` (created if missing); returns the files written.
pub fn generate(what: Generated, out_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut command = Cli::command();
    command.build();
    match what {
        Generated::Man => {
            let mut written = Vec::new();
            write_man(&command, "tmem", out_dir, &mut written)?;
            Ok(written)
        }
        Generated::Completions => [Shell::Bash, Shell::Zsh, Shell::Fish]
            .into_iter()
            .map(|shell| clap_complete::generate_to(shell, &mut command.clone(), "tmem", out_dir))
            .collect(),
    }
}

/// Writes `name.1` for `command` and, for each visible subcommand, `name-sub.1`.
fn write_man(command: &clap::Command, name: &str, out_dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let path = out_dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).title(name).render(&mut page)?;
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_man(sub, &format!("{name}-{}", sub.get_name()), out_dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_generate() {
        let dir = std::env::temp_dir().join(format!("tmem-generate-{}", std::process::id()));
        let pages = generate(Generated::Man, &dir).unwrap();
        let names: Vec<String> = pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for expected in ["tmem.1", "tmem-serve.1", "tmem-pool.1", "tmem-pool-create.1"] {
            assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "the hidden command has no page: {names:?}");
        let serve = std::fs::read_to_string(dir.join("tmem-serve.1")).unwrap();
        assert!(serve.starts_with(".ie") || serve.contains(".TH"), "roff: {serve:.200}");
        assert!(serve.contains("config") && serve.contains("memory\\-limit"), "{serve}");

        let scripts = generate(Generated::Completions, &dir).unwrap();
        assert_eq!(scripts.len(), 3);
        let bash = std::fs::read_to_string(dir.join("tmem.bash")).unwrap();
        assert!(bash.contains("complete ") && bash.contains("--memory-limit"), "{bash:.300}");
        assert!(std::fs::read_to_string(dir.join("_tmem")).unwrap().starts_with("#compdef tmem"));
        assert!(std::fs::read_to_string(dir.join("tmem.fish")).unwrap().contains("complete -c tmem"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
