//! Chat templates: the model's Jinja `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Error, Result};
use minijinja::machinery::{ast, get_compiled_template, parse, Instruction, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{ObjectRepr, Value, ValueKind};
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

/// Template instructions one render may execute. Real chat templates spend a
/// few dozen per message; this bounds a template that loops forever.
pub const CHAT_TEMPLATE_FUEL: u64 = 2_000_000;

/// Fixed headroom of the rendered text over the conversation itself
/// (system preambles, tool descriptions, role markers).
pub const CHAT_TEMPLATE_OUTPUT_SLACK: usize = 1 << 20;

/// The rendered text may be at most this large: four times what it is made of
/// (messages, BOS/EOS) plus [`CHAT_TEMPLATE_OUTPUT_SLACK`].
pub fn chat_template_output_cap(messages: &[ChatMessage], bos: &str, eos: &str) -> usize {
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + bos.len() + eos.len())
        .sum();
    input
        .saturating_mul(4)
        .saturating_add(CHAT_TEMPLATE_OUTPUT_SLACK)
}

/// Nesting allowed in a value stored into a namespace (`{% set ns.x = v %}`).
pub const NAMESPACE_MAX_DEPTH: usize = 32;

/// Values one render may walk while checking namespace assignments.
pub const NAMESPACE_CHECK_BUDGET: usize = 16 << 20;

/// The function every `{% set ns.attr = value %}` is routed through.
const GUARD: &str = "__wasm_chord_namespace_set";

/// Route every namespace assignment `{% set a.b = expr %}` of `template`
/// through [`GUARD`]: `{% set a.b = GUARD(a, (expr)) %}`.
///
/// Namespaces are the only mutable values of a template, so they are the only
/// way to make a cycle (`{% set ns.n = ns %}`: minijinja's `Arc`s never free
/// it, and printing it recurses until the guest's stack overflows) and the
/// only way a loop carries a growing value from one iteration to the next.
/// The guard refuses both (see [`check_namespace_value`]). Attribute
/// assignments anywhere else (a `for` target, a `set` block, unpacking) are
/// refused when the template is compiled (no chat template uses them).
fn guard_namespace_sets(template: &str) -> Result<String> {
    let invalid = |m: String| Error::InvalidModel(format!("chat template: {m}"));
    if template.contains(GUARD) {
        return Err(invalid(format!("it uses the reserved name {GUARD}")));
    }
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    let root = parse(template, "chat", SyntaxConfig, ws)
        .map_err(|e| Error::InvalidInput(format!("chat template: {e}")))?;
    // (offset of the value, its end, the namespace expression's source)
    let mut sites: Vec<(usize, usize, String)> = Vec::new();
    for set in namespace_sets(&root) {
        let ast::Expr::GetAttr(target) = &set.target else {
            continue;
        };
        let object = target.expr.span();
        let object = template
            .get(object.start_offset as usize..object.end_offset as usize)
            .ok_or_else(|| invalid("a span outside the template".into()))?;
        // The value starts after the `=` that follows the target (the span
        // of a filtered value starts at its filter).
        let after = set.target.span().end_offset as usize;
        let start = template
            .get(after..)
            .and_then(|rest| rest.find('=').map(|i| after + i + 1))
            .ok_or_else(|| invalid("no `=` after a namespace attribute".into()))?;
        sites.push((
            start,
            set.expr.span().end_offset as usize,
            object.to_string(),
        ));
    }
    sites.sort_by_key(|s| s.0);
    let mut out = String::with_capacity(template.len() + sites.len() * (GUARD.len() + 16));
    let mut at = 0;
    for (start, end, object) in &sites {
        let (Some(before), Some(value)) = (template.get(at..*start), template.get(*start..*end))
        else {
            return Err(invalid("overlapping namespace assignments".into()));
        };
        out.push_str(before);
        out.push_str(&format!("{GUARD}({object}, ({value}))"));
        at = *end;
    }
    out.push_str(template.get(at..).unwrap_or(""));
    // Check the rewrite: every namespace assignment now calls the guard.
    let again = parse(&out, "chat", SyntaxConfig, ws)
        .map_err(|e| invalid(format!("cannot guard its namespace assignments: {e}")))?;
    let guarded = namespace_sets(&again).iter().all(|set| {
        matches!(&set.expr, ast::Expr::Call(c)
            if matches!(&c.expr, ast::Expr::Var(v) if v.id == GUARD))
    });
    if !guarded || namespace_sets(&again).len() != sites.len() {
        return Err(invalid("cannot guard its namespace assignments".into()));
    }
    Ok(out)
}

/// The `{% set a.b = value %}` statements of a parsed template, at any depth.
fn namespace_sets<'t, 's>(root: &'t ast::Stmt<'s>) -> Vec<&'t ast::Set<'s>> {
    let mut sets = Vec::new();
    let mut stack: Vec<&ast::Stmt> = vec![root];
    while let Some(stmt) = stack.pop() {
        match stmt {
            ast::Stmt::Template(t) => stack.extend(&t.children),
            ast::Stmt::ForLoop(f) => stack.extend(f.body.iter().chain(&f.else_body)),
            ast::Stmt::IfCond(i) => stack.extend(i.true_body.iter().chain(&i.false_body)),
            ast::Stmt::WithBlock(w) => stack.extend(&w.body),
            ast::Stmt::SetBlock(b) => stack.extend(&b.body),
            ast::Stmt::AutoEscape(a) => stack.extend(&a.body),
            ast::Stmt::FilterBlock(f) => stack.extend(&f.body),
            ast::Stmt::Block(b) => stack.extend(&b.body),
            ast::Stmt::Macro(m) => stack.extend(&m.body),
            ast::Stmt::CallBlock(c) => stack.extend(&c.macro_decl.body),
            ast::Stmt::Set(set) if matches!(set.target, ast::Expr::GetAttr(_)) => sets.push(&**set),
            _ => {}
        }
    }
    sets
}

/// Refuse `value` as the new content of an attribute of `namespace` when it
/// would make a cycle (the namespace is reachable from it), is nested deeper
/// than [`NAMESPACE_MAX_DEPTH`], holds more than `cap` bytes, or holds
/// something other than strings, numbers, lists, maps and namespaces (a lazy
/// iterable or a macro could reach the namespace unseen). A lazy iterable at
/// the top is stored as a list. `work` counts the values walked this render.
fn check_namespace_value(
    namespace: &Value,
    value: Value,
    cap: usize,
    work: &AtomicUsize,
) -> std::result::Result<Value, minijinja::Error> {
    let fail = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, m);
    let value = match value.as_object() {
        Some(o) if o.repr() == ObjectRepr::Iterable => {
            let mut items = Vec::new();
            for v in value.try_iter()? {
                if items.len() > cap / 16 {
                    return Err(fail(format!(
                        "a value stored in a namespace exceeds {cap} bytes"
                    )));
                }
                items.push(v);
            }
            Value::from(items)
        }
        _ => value,
    };
    let mut size = 0usize;
    let mut todo = vec![(value.clone(), 0usize)];
    while let Some((v, depth)) = todo.pop() {
        if work.fetch_add(1, Ordering::Relaxed) >= NAMESPACE_CHECK_BUDGET {
            return Err(fail(format!(
                "namespace assignments walk more than {NAMESPACE_CHECK_BUDGET} values"
            )));
        }
        size = size.saturating_add(16);
        if v.kind() == ValueKind::String || v.kind() == ValueKind::Bytes {
            size = size.saturating_add(v.len().unwrap_or(0));
        }
        if size > cap {
            return Err(fail(format!(
                "a value stored in a namespace exceeds {cap} bytes"
            )));
        }
        let Some(object) = v.as_object() else {
            continue;
        };
        if minijinja::tests::is_sameas(&v, namespace) {
            return Err(fail("a namespace cannot contain itself".into()));
        }
        if depth >= NAMESPACE_MAX_DEPTH {
            return Err(fail(format!(
                "a value stored in a namespace is nested deeper than {NAMESPACE_MAX_DEPTH}"
            )));
        }
        match object.repr() {
            ObjectRepr::Map => {
                for (k, item) in object.try_iter_pairs().into_iter().flatten() {
                    todo.push((k, depth + 1));
                    todo.push((item, depth + 1));
                }
            }
            ObjectRepr::Seq => {
                for item in object.try_iter().into_iter().flatten() {
                    todo.push((item, depth + 1));
                }
            }
            _ => {
                return Err(fail(format!(
                    "a namespace can hold strings, numbers, lists and maps, not {}",
                    v.kind()
                )))
            }
        }
    }
    Ok(value)
}

/// A `Vec` that refuses to grow beyond `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.cap - self.buf.len() {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render `messages` with `template`.
///
/// The render is bounded: at most [`CHAT_TEMPLATE_FUEL`] instructions and
/// [`chat_template_output_cap`] bytes of output. A template over either budget
/// is an [`Error::InvalidModel`] (the template comes from the model file); an
/// error the template raises about the messages is an [`Error::InvalidInput`].
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let guarded = guard_namespace_sets(template)?;
    let mut env = Environment::new();
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    // No clock inside the sandbox: a fixed date keeps renders reproducible.
    env.add_function("strftime_now", |_fmt: String| -> String {
        "01 Jan 2026".to_string()
    });
    let cap = chat_template_output_cap(messages, bos_token, eos_token);
    let work = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicBool::new(false));
    let refused_in_guard = Arc::clone(&refused);
    env.add_function(GUARD, move |namespace: Value, value: Value| {
        let checked = check_namespace_value(&namespace, value, cap, &work);
        if checked.is_err() {
            refused_in_guard.store(true, Ordering::Relaxed);
        }
        checked
    });
    let err = |e: minijinja::Error| Error::InvalidInput(format!("chat template: {e}"));
    env.add_template("chat", &guarded).map_err(err)?;
    let tpl = env.get_template("chat").map_err(err)?;
    let compiled = get_compiled_template(&tpl);
    let set_attrs = std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .flat_map(|i| (0..i.len()).filter_map(|n| i.get(n as u32)))
        .filter(|i| matches!(i, Instruction::SetAttr(_)))
        .count();
    let guards = std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .flat_map(|i| (0..i.len()).filter_map(|n| i.get(n as u32)))
        .filter(|i| matches!(i, Instruction::CallFunction(name, _) if *name == GUARD))
        .count();
    if set_attrs > guards {
        return Err(Error::InvalidModel(
            "chat template: an attribute is assigned outside `{% set ns.attr = value %}` \
             (in a for loop, a set block or an unpacking)"
                .into(),
        ));
    }
    let mut out = CappedWriter {
        buf: Vec::new(),
        cap,
        overflowed: false,
    };
    let rendered = tpl.render_captured_to(
        context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        },
        &mut out,
    );
    match rendered {
        Ok(_) => {}
        Err(_) if out.overflowed => {
            return Err(Error::InvalidModel(format!(
                "chat template: the rendered text exceeds {} bytes",
                out.cap
            )))
        }
        Err(e) if refused.load(Ordering::Relaxed) => {
            return Err(Error::InvalidModel(format!("chat template: {e}")))
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => {
            return Err(Error::InvalidModel(format!(
                "chat template: rendering exceeds {CHAT_TEMPLATE_FUEL} instructions"
            )))
        }
        Err(e) => return Err(err(e)),
    }
    String::from_utf8(out.buf)
        .map_err(|_| Error::InvalidModel("chat template: the output is not UTF-8".into()))
}
