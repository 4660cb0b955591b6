//! Writes the man pages into a folder: `summond.8` from the same clap definition as
//! `summond --help`, and `summond.toml.5` from docs/config.md, so neither can drift from its
//! source. `scripts/package` runs it before `cargo deb`.
//!
//! Usage: `summond-man OUTDIR`

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use summon_daemon::cli::Cli;

/// The configuration reference the config page is made from (compiled in, so the generator
/// works wherever it runs).
const CONFIG_MD: &str = include_str!("../../../docs/config.md");

/// Where the packaged files live; the man pages name them in FILES.
const CONFIG_PATH: &str = "/etc/summon/summond.toml";
const IMAGES_DIR: &str = "/usr/share/summon/images";
const DOC_DIR: &str = "/usr/share/doc/summon";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: summond-man OUTDIR");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    write(&out.join("summond.8"), &summond_8()?)?;
    write(&out.join("summond.toml.5"), &summond_toml_5(CONFIG_MD))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// summond(8): clap's sections plus what `--help` cannot say (signals, files, environment).
fn summond_8() -> anyhow::Result<String> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration")
        .source(format!("summon {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut text = String::from_utf8(out)?;
    text.push_str(&commands_section(&Cli::command()));
    text.push_str(&format!(
        r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Re\-read the configuration file (\fBsystemctl reload summond\fR). A file with errors is
rejected and logged; the running configuration stays.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop every instance, remove every tap, route and neighbour entry the daemon made, and exit 0.
.SH ENVIRONMENT
.TP
\fBSUMMOND_LOG\fR
Log filter in tracing's EnvFilter syntax, e.g. \fBinfo,hickory_server=warn\fR. Logs go to
standard error (the journal under systemd).
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR
Set by systemd: readiness, reload and watchdog notifications (\fBType=notify\fR).
.SH FILES
.TP
\fI{CONFIG_PATH}\fR
The configuration (a conffile of the package), see \fBsummond.toml\fR(5).
.TP
\fI{IMAGES_DIR}/\fR
The \fBhttp.hvt\fR and \fBhello.hvt\fR unikernel images the packaged configuration uses.
.TP
\fI/lib/systemd/system/summond.service\fR
The systemd unit.
.TP
\fI{DOC_DIR}/\fR
Documentation (operations.md: install, upgrade, metrics, alerts, dashboard) and, under
\fIexamples/\fR, the annotated configuration, the Prometheus scrape configuration, rules and
their unit test, and the Grafana dashboard.
.SH SEE ALSO
\fBsummond.toml\fR(5), \fBsummon-run\fR \-\-help, \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#
    ));
    Ok(text)
}

/// COMMANDS: each subcommand with its arguments, from the same clap definition (clap_mangen
/// would point at one page per subcommand, which the package does not ship).
fn commands_section(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        let mut synopsis = format!("\\fBsummond {}\\fR", escape(sub.get_name()));
        for a in args.iter().filter(|a| a.is_positional()) {
            synopsis.push_str(&format!(" \\fI{}\\fR", value_name(a)));
        }
        if args
            .iter()
            .any(|a| !a.is_positional() && a.get_id() != "config")
        {
            synopsis.push_str(" [\\fIOPTIONS\\fR]");
        }
        out.push_str(&format!(".TP\n{synopsis}\n"));
        if let Some(about) = sub.get_about() {
            out.push_str(&escape_line(&escape(&about.to_string())));
            out.push('\n');
        }
        for a in args
            .iter()
            .filter(|a| !a.is_positional() && a.get_id() != "config")
        {
            let mut flag = a
                .get_long()
                .map(|l| format!("\\fB\\-\\-{}\\fR", escape(l)))
                .unwrap_or_default();
            if a.get_action().takes_values() {
                flag.push_str(&format!(" \\fI{}\\fR", value_name(a)));
            }
            let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                help.push_str(&format!(" (default: {})", defaults.join(", ")));
            }
            out.push_str(&format!(
                ".RS\n.TP\n{flag}\n{}\n.RE\n",
                escape_line(&escape(&help))
            ));
        }
    }
    out
}

/// An argument's value name as clap prints it (`FILE`, `ADMIN`).
fn value_name(a: &clap::Arg) -> String {
    a.get_value_names()
        .and_then(|n| n.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
}

/// summond.toml(5), converted from docs/config.md: headings become sections, the key tables
/// become tagged paragraphs (one per key), lists and code blocks keep their shape.
fn summond_toml_5(md: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH SUMMOND.TOML 5 \"\" \"summon {}\" \"File Formats\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(".SH NAME\nsummond.toml \\- configuration file of summond(8)\n");
    out.push_str(&format!(
        ".SH SYNOPSIS\n\\fI{CONFIG_PATH}\\fR\n.SH DESCRIPTION\n"
    ));
    let mut lines = md.lines().peekable();
    let mut in_code = false;
    let mut table_header: Option<Vec<String>> = None;
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            out.push_str(if in_code {
                ".fi\n.RE\n"
            } else {
                ".PP\n.RS 4\n.nf\n"
            });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&escape_line(&escape(line)));
            out.push('\n');
            continue;
        }
        let trimmed = line.trim();
        if let Some(title) = trimmed.strip_prefix("# ") {
            // The page's own title: NAME already says it.
            let _ = title;
            continue;
        }
        if let Some(heading) = trimmed.strip_prefix("## ") {
            let plain = strip_inline(heading);
            let name = if plain.starts_with('[') {
                plain
            } else {
                plain.to_uppercase()
            };
            out.push_str(&format!(".SH \"{}\"\n", name.replace('"', "")));
            continue;
        }
        if trimmed.starts_with('|') {
            let cells = table_cells(trimmed);
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            match &table_header {
                None => table_header = Some(cells),
                Some(header) => out.push_str(&table_row(header, &cells)),
            }
            if !lines.peek().is_some_and(|l| l.trim().starts_with('|')) {
                table_header = None;
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if let Some(item) = trimmed.strip_prefix("- ") {
            // The item and its continuation lines, joined: inline markup may span lines.
            let mut text = item.to_string();
            while let Some(next) = lines.peek() {
                let t = next.trim();
                if t.is_empty() || t.starts_with("- ") || !next.starts_with("  ") {
                    break;
                }
                text.push(' ');
                text.push_str(t);
                lines.next();
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&escape_line(&inline(&text)));
            out.push('\n');
            continue;
        }
        // A paragraph: this line and the following text lines.
        let mut text = trimmed.to_string();
        while let Some(next) = lines.peek() {
            let t = next.trim();
            if t.is_empty()
                || t.starts_with('|')
                || t.starts_with("```")
                || t.starts_with('#')
                || t.starts_with("- ")
            {
                break;
            }
            text.push(' ');
            text.push_str(t);
            lines.next();
        }
        out.push_str(".PP\n");
        out.push_str(&escape_line(&inline(&text)));
        out.push('\n');
    }
    out.push_str(&format!(
        ".SH FILES\n.TP\n\\fI{CONFIG_PATH}\\fR\nThe configuration the packaged unit runs with.\n.TP\n\\fI{DOC_DIR}/examples/example.toml\\fR\nEvery key with its default or an example value.\n"
    ));
    out.push_str(".SH SEE ALSO\n\\fBsummond\\fR(8)\n");
    out
}

/// One table row as a tagged paragraph: the first column is the tag, the middle columns
/// (type, default) follow it in parentheses, the last is the body.
fn table_row(header: &[String], cells: &[String]) -> String {
    let mut s = String::from(".TP\n");
    let Some((first, rest)) = cells.split_first() else {
        return String::new();
    };
    s.push_str(&escape_line(&inline(first)));
    s.push('\n');
    if let Some((last, middle)) = rest.split_last() {
        let details: Vec<String> = middle
            .iter()
            .zip(header.iter().skip(1))
            .map(|(cell, name)| format!("{}: {}", strip_inline(name), inline(cell)))
            .collect();
        if !details.is_empty() {
            s.push_str(&escape_line(&format!("({})", details.join("; "))));
            s.push_str("\n.br\n");
        }
        s.push_str(&escape_line(&inline(last)));
        s.push('\n');
    }
    s
}

/// The cells of a Markdown table row, trimmed (`|` inside backticks does not split).
fn table_cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    for ch in inner.chars() {
        match ch {
            '`' => {
                in_code = !in_code;
                cell.push(ch);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(ch),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

/// Markdown inline markup to roff: `code` and **bold** in bold, links as their text.
fn inline(text: &str) -> String {
    let text = links_to_text(text);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(ch) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix('`') {
            if let Some(end) = after.find('`') {
                out.push_str("\\fB");
                out.push_str(&escape(&after[..end]));
                out.push_str("\\fR");
                rest = &after[end + 1..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix("**") {
            if let Some(end) = after.find("**") {
                out.push_str("\\fB");
                out.push_str(&escape(&after[..end]));
                out.push_str("\\fR");
                rest = &after[end + 2..];
                continue;
            }
        }
        out.push_str(&escape(&ch.to_string()));
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// Inline markup removed (for headings and labels).
fn strip_inline(text: &str) -> String {
    links_to_text(text).replace(['`', '*'], "")
}

/// `[text](target)` → `text`.
fn links_to_text(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let Some(end) = after[close + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&after[..close]);
        rest = &after[close + 2 + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Escapes roff's escape character and hyphens meant as minus signs (options, paths).
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A text line must not start with a control character ('.' or '\'').
fn escape_line(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key in docs/config.md's tables: (section heading, key).
    fn documented_keys(md: &str) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut section = String::new();
        for line in md.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                section = h.to_string();
            } else if line.starts_with("| `") {
                let key = line.split('`').nth(1).unwrap_or_default();
                keys.push((section.clone(), key.to_string()));
            }
        }
        keys
    }

    #[test]
    fn every_documented_key_is_a_tagged_paragraph_of_the_config_page() {
        let page = summond_toml_5(CONFIG_MD);
        let keys = documented_keys(CONFIG_MD);
        assert!(keys.len() >= 25, "found only {keys:?} in docs/config.md");
        for (section, key) in &keys {
            let tag = format!(".TP\n\\fB{}\\fR\n", escape(key));
            assert!(
                page.contains(&tag),
                "{section} {key} is not in summond.toml(5)"
            );
        }
        for section in [
            "[dns]",
            "[network]",
            "[kvm]",
            "[admin]",
            "[limits]",
            "[[service]]",
        ] {
            assert!(
                page.contains(&format!(".SH \"{section}\"\n")),
                "{section} missing"
            );
        }
    }

    #[test]
    fn a_key_missing_from_the_page_is_noticed() {
        // The check above can fail: a key the converter would drop (a table row that lost
        // its leading pipe) is not on the page.
        let md = "## `[dns]`\n\n| key | type | default | meaning |\n|---|---|---|---|\n| `listen` | list | required | where |\n`zone` | name | required | the zone |\n";
        let page = summond_toml_5(md);
        assert!(page.contains(".TP\n\\fBlisten\\fR\n"));
        assert!(!page.contains(".TP\n\\fBzone\\fR\n"));
    }

    #[test]
    fn markup_becomes_roff_and_control_characters_are_escaped() {
        assert_eq!(
            inline("see [benchmarks.md](benchmarks.md#dns), `--port=80` and **A**"),
            "see benchmarks.md, \\fB\\-\\-port=80\\fR and \\fBA\\fR"
        );
        assert_eq!(escape_line(".hidden"), "\\&.hidden");
        assert_eq!(inline("a\\b"), "a\\eb");
        assert_eq!(
            table_cells("| `a|b` | c | d |"),
            vec!["`a|b`".to_string(), "c".into(), "d".into()]
        );
    }

    #[test]
    fn the_daemon_page_has_every_subcommand_and_the_files() {
        let page = summond_8().unwrap();
        for needed in [
            "check\\-config",
            "status",
            "stop",
            "\\-\\-config",
            ".SH SIGNALS",
            "/etc/summon/summond.toml",
        ] {
            assert!(page.contains(needed), "summond(8) lacks {needed}:\n{page}");
        }
    }
}
