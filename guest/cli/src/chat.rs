//! `wasm-chord chat`: an interactive multi-turn chat on stdin/stdout.
//!
//! One kernel session holds the conversation. Each turn renders the whole
//! conversation with the model's chat template (with the generation prompt),
//! tokenizes it exactly as `run --messages` does, keeps the longest prefix it
//! shares with the tokens already in the session (the previous prompt and the
//! reply as generated), rewinds the session to that prefix and evaluates only
//! the rest. So each reply is the one `run --messages` gives for the same
//! conversation, at the cost of the new tokens only.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{kernel_error, LoadArgs};
use crate::run::{rate, write_token_line, GenArgs};
use crate::wasm_chord::runtime::inference::{ChatMessage, Error as KernelError, Model, Session};

#[derive(Debug, Args)]
#[command(after_help = "\
Type a message and press Enter; the reply streams to stdout. A line starting
with '/' is a command:
  /reset   forget the conversation (and empty the KV cache)
  /stats   tokens in the KV cache, tokens evaluated in the last turn and in
           total, speeds of the last turn
  /exit    end the chat (so does the end of input)
Each turn evaluates only the tokens that are new since the last one: the
rendered conversation is compared with the tokens in the KV cache.
When the context (--n-ctx) is full, a message says so and the next message
is refused until /reset; a single message that does not fit is refused alone.")]
pub struct ChatArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// A system message that opens the conversation (else the template's default).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    gen: GenArgs,
    /// Print each reply as JSON lines ({"token", "text"} per token, then one
    /// {"stats"} line per turn) and /stats as a {"session"} line.
    #[arg(long)]
    json: bool,
    /// After each reply, print its token counts and speeds to stderr.
    #[arg(long)]
    stats: bool,
}

/// Counters of one turn (`--json`'s per-turn {"stats"} line).
#[derive(Debug, Clone, Default, serde::Serialize)]
struct TurnStats {
    /// 1 for the first reply after the start or a /reset.
    turn: u32,
    /// Tokens of the whole rendered conversation (the prompt of this reply).
    prompt_tokens: u32,
    /// Of those, tokens already in the KV cache and reused.
    reused_tokens: u32,
    /// Tokens the session held beyond the prefix it shares with this prompt
    /// (a reply the template re-renders differently), dropped by a rewind.
    rewound_tokens: u32,
    /// Tokens evaluated before the first reply token (the new part of the
    /// prompt, plus the last token of the previous reply when it was kept).
    prompt_evaluated: u32,
    /// Reply tokens generated.
    generated_tokens: u32,
    /// Tokens evaluated in this turn (prompt and reply).
    evaluated: u32,
    /// Tokens the session holds after this turn.
    tokens_in_cache: u32,
    /// Context size.
    n_ctx: u32,
    prompt_tokens_per_second: f64,
    generated_tokens_per_second: f64,
    /// "eos", "length" or "context".
    stop_reason: String,
}

/// The `/stats` answer in `--json` mode.
#[derive(serde::Serialize)]
struct SessionLine<'a> {
    session: SessionStats<'a>,
}

#[derive(serde::Serialize)]
struct SessionStats<'a> {
    tokens_in_cache: u32,
    n_ctx: u32,
    /// Tokens evaluated since the chat started (all turns, across /reset).
    evaluated_total: u64,
    turns: u32,
    last_turn: Option<&'a TurnStats>,
}

#[derive(serde::Serialize)]
struct StatsLine<'a> {
    stats: &'a TurnStats,
}

/// The chat's state between turns.
struct Chat<'m> {
    model: &'m Model,
    session: Session,
    /// The conversation (the system message, if any, first).
    messages: Vec<ChatMessage>,
    /// Messages that survive /reset.
    n_fixed: usize,
    /// Set when a reply filled the context; cleared by /reset.
    full: bool,
    turns: u32,
    evaluated_total: u64,
    last: Option<TurnStats>,
}

/// The length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What `chat` does with one input line.
#[derive(Debug, PartialEq)]
enum Input<'a> {
    Skip,
    Exit,
    Reset,
    Stats,
    Unknown(&'a str),
    Message(&'a str),
}

fn parse_line(line: &str) -> Input<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    match line.trim() {
        "" => Input::Skip,
        "/exit" | "/quit" => Input::Exit,
        "/reset" => Input::Reset,
        "/stats" => Input::Stats,
        cmd if cmd.starts_with('/') => Input::Unknown(cmd),
        _ => Input::Message(line),
    }
}

fn context_full_message(n_ctx: u32) -> String {
    format!("the context is full ({n_ctx} tokens): /reset to start a new conversation, or /exit")
}

impl Chat<'_> {
    fn reset(&mut self) {
        self.messages.truncate(self.n_fixed);
        self.session.reset();
        self.full = false;
        self.turns = 0;
    }

    fn stats_text(&self) -> String {
        let mut s = format!(
            "tokens in cache: {} of {}; evaluated in total: {} tokens in {} turn{}",
            self.session.tokens().len(),
            self.session.n_ctx(),
            self.evaluated_total,
            self.turns,
            if self.turns == 1 { "" } else { "s" },
        );
        if let Some(t) = &self.last {
            s += &format!(
                "\nlast turn: prompt {} tokens ({} reused from the cache, {} rewound, {} evaluated, {:.2} tokens/s); reply {} tokens ({:.2} tokens/s, stop: {}); {} tokens evaluated",
                t.prompt_tokens,
                t.reused_tokens,
                t.rewound_tokens,
                t.prompt_evaluated,
                t.prompt_tokens_per_second,
                t.generated_tokens,
                t.generated_tokens_per_second,
                t.stop_reason,
                t.evaluated,
            );
        }
        s
    }

    /// One user message and the streamed reply. Returns false when stdout is closed.
    fn turn(&mut self, a: &ChatArgs, text: &str, out: &mut impl Write) -> Result<bool> {
        let n_ctx = self.session.n_ctx();
        if self.full {
            eprintln!("{}", context_full_message(n_ctx));
            return Ok(true);
        }
        self.messages.push(ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        });
        let rendered = self
            .model
            .apply_chat_template(&self.messages, true)
            .map_err(kernel_error)?;
        let prompt = self
            .model
            .tokenize(&rendered, true, true)
            .map_err(kernel_error)?;
        // The reply needs at least one position after the prompt.
        if prompt.len() >= n_ctx as usize {
            self.messages.pop();
            let remedy = if self.messages.len() == self.n_fixed {
                "send a shorter one, or a larger --n-ctx"
            } else {
                "send a shorter one, or /reset to start a new conversation"
            };
            eprintln!(
                "this message does not fit: the conversation would take {} of {n_ctx} context tokens; {remedy}",
                prompt.len()
            );
            return Ok(true);
        }
        if prompt.is_empty() {
            bail!("the chat template rendered an empty prompt");
        }
        // Reuse the longest prefix the cache shares with the new prompt; at
        // least one prompt token is evaluated, for the logits of the reply.
        let held = self.session.tokens();
        let keep = common_prefix(&held, &prompt).min(prompt.len() - 1);
        let rewound = (held.len() - keep) as u32;
        if rewound > 0 {
            self.session.truncate(keep as u32).map_err(kernel_error)?;
        }
        let past_before = self.session.n_past();

        let started = Instant::now();
        let generation = match self
            .session
            .generate(&prompt[keep..], &a.gen.generate_options())
        {
            Ok(g) => g,
            Err(KernelError::ContextFull(_)) => {
                self.messages.pop();
                self.full = true;
                eprintln!("{}", context_full_message(n_ctx));
                return Ok(true);
            }
            Err(e) => return Err(kernel_error(e)),
        };
        let prompt_time = started.elapsed();
        let gen_started = Instant::now();
        let mut reply = String::new();
        let mut generated = 0u32;
        let mut open = true;
        while let Some(piece) = generation.next().map_err(kernel_error)? {
            generated += 1;
            reply.push_str(&piece.text);
            if open {
                let r = if a.json {
                    write_token_line(out, &piece)
                } else {
                    write!(out, "{}", piece.text)
                };
                if let Err(e) = r.and_then(|()| out.flush()) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(e).context("cannot write to stdout");
                    }
                    open = false;
                }
            }
        }
        let generation_time = gen_started.elapsed();
        let prompt_evaluated = generation.prompt_tokens();
        let reason = generation.stop_reason().unwrap_or_else(|| "unknown".into());
        drop(generation);
        if !open {
            return Ok(false);
        }
        self.messages.push(ChatMessage {
            role: "assistant".into(),
            content: reply.clone(),
        });
        let evaluated = self.session.n_past().saturating_sub(past_before);
        self.turns += 1;
        self.evaluated_total += u64::from(evaluated);
        let stats = TurnStats {
            turn: self.turns,
            prompt_tokens: prompt.len() as u32,
            reused_tokens: past_before,
            rewound_tokens: rewound,
            prompt_evaluated,
            generated_tokens: generated,
            evaluated,
            tokens_in_cache: self.session.tokens().len() as u32,
            n_ctx,
            prompt_tokens_per_second: rate(prompt_evaluated, prompt_time),
            // Like `run`: n generated tokens take n - 1 evaluations.
            generated_tokens_per_second: rate(generated.saturating_sub(1), generation_time),
            stop_reason: reason,
        };
        let r = if a.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&StatsLine { stats: &stats })?
            )
        } else if !reply.ends_with('\n') {
            writeln!(out)
        } else {
            Ok(())
        };
        if let Err(e) = r.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(false);
            }
            return Err(e).context("cannot write to stdout");
        }
        if stats.stop_reason == "context" {
            self.full = true;
            eprintln!("{}", context_full_message(n_ctx));
        }
        self.last = Some(stats);
        if a.stats {
            eprintln!("{}", self.stats_text());
        }
        Ok(true)
    }
}

pub fn chat(a: ChatArgs) -> Result<()> {
    a.gen.validate()?;
    let (model, load_time) = a.load.load()?;
    let messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    // Fail before reading any input when the model cannot chat.
    let mut probe = messages.clone();
    probe.push(ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    });
    model
        .apply_chat_template(&probe, true)
        .map_err(kernel_error)
        .context("cannot chat with this model")?;
    let session = model.new_session(a.gen.n_ctx).map_err(kernel_error)?;
    eprintln!(
        "chat with {} (context {} tokens, loaded in {:.0} ms): /reset, /stats, /exit; end of input ends it",
        a.load.model.display(),
        session.n_ctx(),
        ms(load_time),
    );
    let mut chat = Chat {
        model: &model,
        session,
        n_fixed: messages.len(),
        messages,
        full: false,
        turns: 0,
        evaluated_total: 0,
        last: None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut bytes = Vec::new();
    loop {
        eprint!("> ");
        bytes.clear();
        if input
            .read_until(b'\n', &mut bytes)
            .context("cannot read stdin")?
            == 0
        {
            // End of input: end the prompt line.
            eprintln!();
            return Ok(());
        }
        // Invalid UTF-8 becomes U+FFFD rather than ending the chat.
        let line = String::from_utf8_lossy(&bytes);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        match parse_line(line) {
            Input::Skip => {}
            Input::Exit => return Ok(()),
            Input::Reset => {
                chat.reset();
                eprintln!("(conversation cleared)");
            }
            Input::Stats => {
                let r = if a.json {
                    let l = SessionLine {
                        session: SessionStats {
                            tokens_in_cache: chat.session.tokens().len() as u32,
                            n_ctx: chat.session.n_ctx(),
                            evaluated_total: chat.evaluated_total,
                            turns: chat.turns,
                            last_turn: chat.last.as_ref(),
                        },
                    };
                    writeln!(out, "{}", serde_json::to_string(&l)?)
                } else {
                    writeln!(out, "{}", chat.stats_text())
                };
                if let Err(e) = r.and_then(|()| out.flush()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e).context("cannot write to stdout");
                }
            }
            Input::Unknown(cmd) => {
                eprintln!("unknown command '{cmd}': the commands are /reset, /stats, /exit")
            }
            Input::Message(text) => {
                if !chat.turn(&a, text, &mut out)? {
                    return Ok(());
                }
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
