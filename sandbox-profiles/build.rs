//! Compiles the seccomp profiles in `profiles/` at build time, so that a
//! bad profile breaks the build rather than a running VM.
//!
//! A profile is JSON a reviewer reads:
//! `{ "comment": "...", "include": ["common"], "allow": [rule...], "errno": [rule...] }`.
//! An `allow` rule is seccompiler's (`syscall`, optional `args`), each
//! with a `comment`; an argument's `val` and `masked_eq` mask may name a
//! constant of `src/constants.rs`. An `errno` rule (`syscall`, `errno`
//! name, `comment`) makes that call fail with that errno instead.
//!
//! Each profile becomes BPF programs, installed together: one that allows
//! its `allow` rules (and its `errno` calls) and traps everything else
//! (SIGSYS, which the crate's reporter turns into a message and an exit),
//! and one per errno value that returns it for those calls (the kernel
//! takes the strictest answer of all filters: a trap beats an errno, an
//! errno beats an allow). A profile may instead be a denylist
//! (`{ "comment", "deny": [rule...] }`): every call allowed but those,
//! which trap — for the device launcher, whose filter every device it
//! starts inherits on top of its own. The output, `$OUT_DIR/profiles.rs`, holds the
//! programs and, for messages, tests and docs, each profile's calls.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

#[path = "src/constants.rs"]
mod constants;

type Result<T> = std::result::Result<T, String>;

/// A profile with its includes resolved.
#[derive(Default)]
struct Resolved {
    /// seccompiler rules, in order.
    allow: Vec<Value>,
    /// syscall → errno number.
    errno: BTreeMap<String, u32>,
    /// seccompiler rules of a denylist profile (`deny`), in order.
    deny: Vec<Value>,
    /// Profiles already resolved (an include reached twice counts once).
    included: BTreeSet<String>,
}

fn errno_number(name: &str) -> Option<u32> {
    Some(match name {
        "EPERM" => 1,
        "ENOENT" => 2,
        "EACCES" => 13,
        "ENOSYS" => 38,
        _ => return None,
    })
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!("{what}: unknown key {key:?}"));
        }
    }
    Ok(())
}

fn comment(obj: &Map<String, Value>, what: &str) -> Result<()> {
    match obj.get("comment") {
        Some(Value::String(c)) if !c.trim().is_empty() => Ok(()),
        _ => Err(format!(
            "{what}: every rule and argument needs a \"comment\" saying why"
        )),
    }
}

/// A constant's name (or a number) → its value.
fn value(v: &Value, what: &str) -> Result<Value> {
    match v {
        Value::Number(_) => Ok(v.clone()),
        Value::String(name) => constants::constant(name).map(|n| json!(n)).ok_or_else(|| {
            format!("{what}: unknown constant {name:?} (add it to src/constants.rs)")
        }),
        _ => Err(format!("{what}: a value is a number or a constant's name")),
    }
}

/// Checks one `allow` rule and resolves its constants.
fn allow_rule(rule: &Value, what: &str) -> Result<Value> {
    let obj = rule
        .as_object()
        .ok_or(format!("{what}: a rule is an object"))?;
    check_keys(obj, &["syscall", "args", "comment"], what)?;
    comment(obj, what)?;
    let name = obj
        .get("syscall")
        .and_then(Value::as_str)
        .ok_or(format!("{what}: no \"syscall\""))?;
    let what = format!("{what} ({name})");
    let mut out = Map::new();
    out.insert("syscall".into(), json!(name));
    if let Some(args) = obj.get("args") {
        let args = args
            .as_array()
            .ok_or(format!("{what}: \"args\" is a list"))?;
        let mut resolved = Vec::new();
        for arg in args {
            let a = arg
                .as_object()
                .ok_or(format!("{what}: an argument is an object"))?;
            check_keys(a, &["index", "type", "op", "val", "comment"], &what)?;
            comment(a, &what)?;
            let mut r = a.clone();
            r.remove("comment");
            let val = a
                .get("val")
                .ok_or(format!("{what}: an argument needs \"val\""))?;
            r.insert("val".into(), value(val, &what)?);
            if let Some(Value::Object(op)) = a.get("op") {
                let mut op = op.clone();
                if let Some(mask) = op.get("masked_eq").cloned() {
                    op.insert("masked_eq".into(), value(&mask, &what)?);
                }
                r.insert("op".into(), Value::Object(op));
            }
            resolved.push(Value::Object(r));
        }
        out.insert("args".into(), Value::Array(resolved));
    }
    Ok(Value::Object(out))
}

fn load(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Resolves `name` and its includes (each included once, depth first).
fn resolve(dir: &Path, name: &str, stack: &mut Vec<String>, out: &mut Resolved) -> Result<()> {
    if stack.iter().any(|s| s == name) {
        return Err(format!("include cycle: {} -> {name}", stack.join(" -> ")));
    }
    if !out.included.insert(name.to_string()) {
        return Ok(());
    }
    stack.push(name.to_string());
    let profile = load(dir, name)?;
    let what = format!("profile {name}");
    let obj = profile
        .as_object()
        .ok_or(format!("{what}: not an object"))?;
    check_keys(
        obj,
        &["comment", "include", "allow", "errno", "deny"],
        &what,
    )?;
    comment(obj, &what)?;
    for (i, rule) in obj
        .get("deny")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        out.deny
            .push(allow_rule(rule, &format!("{what}, deny rule {i}"))?);
    }
    for inc in obj
        .get("include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let inc = inc.as_str().ok_or(format!("{what}: includes are names"))?;
        resolve(dir, inc, stack, out)?;
    }
    for (i, rule) in obj
        .get("allow")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        out.allow
            .push(allow_rule(rule, &format!("{what}, allow rule {i}"))?);
    }
    for (i, rule) in obj
        .get("errno")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let w = format!("{what}, errno rule {i}");
        let r = rule
            .as_object()
            .ok_or(format!("{w}: a rule is an object"))?;
        check_keys(r, &["syscall", "errno", "comment"], &w)?;
        comment(r, &w)?;
        let syscall = r
            .get("syscall")
            .and_then(Value::as_str)
            .ok_or(format!("{w}: no syscall"))?;
        let errno = r
            .get("errno")
            .and_then(Value::as_str)
            .and_then(errno_number)
            .ok_or(format!(
                "{w}: \"errno\" must be EPERM, ENOENT, EACCES or ENOSYS"
            ))?;
        out.errno.insert(syscall.to_string(), errno);
    }
    stack.pop();
    Ok(())
}

/// The seccompiler JSON of one profile: its allowlist and errno filters,
/// or its denylist (which allows every call but the ones it names, and
/// traps those).
fn seccompiler_json(name: &str, p: &Resolved) -> Result<(Value, Vec<String>)> {
    if !p.deny.is_empty() {
        if !p.allow.is_empty() || !p.errno.is_empty() {
            return Err(format!(
                "profile {name}: a profile has a \"deny\" list or \"allow\"/\"errno\" rules, not both"
            ));
        }
        let program =
            json!({ "mismatch_action": "allow", "match_action": "trap", "filter": p.deny });
        return Ok((json!({ name: program }), vec![name.to_string()]));
    }
    let allowed: BTreeSet<&str> = p
        .allow
        .iter()
        .filter_map(|r| r.get("syscall").and_then(Value::as_str))
        .collect();
    for call in p.errno.keys() {
        if allowed.contains(call.as_str()) {
            return Err(format!(
                "profile {name}: {call} is both allowed and an errno rule"
            ));
        }
    }
    let mut filter = p.allow.clone();
    filter.extend(p.errno.keys().map(|s| json!({ "syscall": s })));
    let mut map = Map::new();
    // Installed in this order: the errno filters first, then the
    // allowlist, which would trap the calls that install a filter.
    let mut order = Vec::new();
    map.insert(
        name.to_string(),
        json!({ "mismatch_action": "trap", "match_action": "allow", "filter": filter }),
    );
    let by_errno: BTreeMap<u32, Vec<&String>> =
        p.errno.iter().fold(BTreeMap::new(), |mut m, (call, e)| {
            m.entry(*e).or_default().push(call);
            m
        });
    for (errno, calls) in by_errno {
        let key = format!("{name}.errno{errno}");
        let rules: Vec<Value> = calls.iter().map(|c| json!({ "syscall": c })).collect();
        map.insert(
            key.clone(),
            json!({ "mismatch_action": "allow", "match_action": { "errno": errno }, "filter": rules }),
        );
        order.push(key);
    }
    order.push(name.to_string());
    Ok((Value::Object(map), order))
}

fn generate(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    let mut code = String::from("// Generated by build.rs from profiles/*.json: do not edit.\n\n");
    code.push_str("/// Every profile, compiled.\npub static PROFILES: &[CompiledProfile] = &[\n");
    for name in &names {
        println!(
            "cargo:rerun-if-changed={}",
            dir.join(format!("{name}.json")).display()
        );
        let mut resolved = Resolved::default();
        resolve(dir, name, &mut Vec::new(), &mut resolved)?;
        let (json, order) = seccompiler_json(name, &resolved)?;
        let bpf = seccompiler::compile_from_json(
            json.to_string().as_bytes(),
            seccompiler::TargetArch::x86_64,
        )
        .map_err(|e| format!("profile {name}: {e}"))?;
        let allowed: BTreeSet<&str> = resolved
            .allow
            .iter()
            .filter_map(|r| r.get("syscall").and_then(Value::as_str))
            .collect();
        let _ = writeln!(code, "    CompiledProfile {{\n        name: {name:?},");
        let _ = writeln!(
            code,
            "        allowed: &{:?},",
            allowed.iter().collect::<Vec<_>>()
        );
        let errno: Vec<(&String, &u32)> = resolved.errno.iter().collect();
        let _ = writeln!(code, "        errno: &{errno:?},");
        let denied: BTreeSet<&str> = resolved
            .deny
            .iter()
            .filter_map(|r| r.get("syscall").and_then(Value::as_str))
            .collect();
        let _ = writeln!(
            code,
            "        denied: &{:?},",
            denied.iter().collect::<Vec<_>>()
        );
        code.push_str("        programs: &[\n");
        for key in &order {
            let prog = bpf
                .get(key)
                .ok_or(format!("profile {name}: {key} not compiled"))?;
            code.push_str("            &[");
            for ins in prog {
                let _ = write!(code, "({}, {}, {}, {}), ", ins.code, ins.jt, ins.jf, ins.k);
            }
            code.push_str("],\n");
        }
        code.push_str("        ],\n    },\n");
    }
    code.push_str("];\n");
    Ok(code)
}

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("profiles");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed=src/constants.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("profiles.rs");
    match generate(&dir)
        .and_then(|code| std::fs::write(&out, code).map_err(|e| format!("{}: {e}", out.display())))
    {
        Ok(()) => {}
        Err(e) => {
            // A bad profile stops the build, naming the file and the rule.
            eprintln!("sandbox-profiles: {e}");
            std::process::exit(1);
        }
    }
}
