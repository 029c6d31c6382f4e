//! The line editor `mcp-chat join` uses when stdin is a terminal: what you
//! type stays on its own line at the bottom, and everything else (the
//! stranger's messages, notices) is printed above it, so a message that
//! arrives mid-word never lands inside your half-typed line.
//!
//! rustyline reads lines on a thread of its own (it blocks), one at a time:
//! after each line it waits for [`LineEditor::resume`], so the terminal is
//! back in its normal mode whenever the chat acts on a line (and when it
//! exits after `/quit`). Lines are printed through rustyline's external
//! printer, which redraws the input line below them. History keeps your
//! own lines for this run only: chat lines are never written to disk.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

const PROMPT: &str = "> ";
/// Lines kept for the up arrow.
const HISTORY: usize = 500;

/// What the person did at the prompt.
#[derive(Debug)]
pub enum Read {
    Line(String),
    /// Ctrl-D or Ctrl-C.
    Quit,
    Failed(String),
}

type Printer = Arc<Mutex<Box<dyn ExternalPrinter + Send>>>;

/// Where `join` prints: straight to stdout (plain line mode, for scripts),
/// or above the line being typed.
#[derive(Clone, Default)]
pub struct Screen {
    printer: Option<Printer>,
}

impl Screen {
    /// Whether lines go above a line editor's prompt.
    pub fn is_editor(&self) -> bool {
        self.printer.is_some()
    }

    /// Prints one whole line.
    pub fn line(&self, text: &str) {
        match &self.printer {
            Some(printer) => {
                // A failed print means the terminal is gone; the read that
                // follows says so.
                let _ = lock(printer).print(format!("{text}\n"));
            }
            None => println!("{text}"), // stdout-ok
        }
    }
}

fn lock(printer: &Printer) -> std::sync::MutexGuard<'_, Box<dyn ExternalPrinter + Send>> {
    // Printing holds no state a panic could leave half-made.
    printer.lock().unwrap_or_else(|e| e.into_inner())
}

/// The prompt at the bottom of the terminal, read on its own thread.
pub struct LineEditor {
    lines: mpsc::Receiver<Read>,
    resume: std::sync::mpsc::SyncSender<()>,
    screen: Screen,
}

impl LineEditor {
    /// A line editor, when stdin and stdout are both a terminal.
    pub fn for_terminal() -> Option<Result<Self, ReadlineError>> {
        // `join` is a human subcommand; this only asks whether stdout is a terminal.
        let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal(); // stdout-ok
        terminal.then(Self::start)
    }

    fn start() -> Result<Self, ReadlineError> {
        let config = Config::builder()
            .auto_add_history(false)
            .max_history_size(HISTORY)?
            .build();
        let mut editor = DefaultEditor::with_config(config)?;
        let printer: Printer = Arc::new(Mutex::new(Box::new(editor.create_external_printer()?)));
        let (line_tx, lines) = mpsc::channel(1);
        let (resume, resumed) = std::sync::mpsc::sync_channel(1);
        let screen = Screen {
            printer: Some(Arc::clone(&printer)),
        };
        std::thread::spawn(move || read_lines(editor, &printer, &line_tx, &resumed));
        Ok(Self {
            lines,
            resume,
            screen,
        })
    }

    pub fn screen(&self) -> Screen {
        self.screen.clone()
    }

    /// The next thing typed. Cancel-safe: a line not taken now is taken by
    /// the next call.
    pub async fn next(&mut self) -> Read {
        self.lines.recv().await.unwrap_or(Read::Quit)
    }

    /// Shows the prompt again, once the last line has been acted on.
    pub fn resume(&self) {
        let _ = self.resume.try_send(());
    }
}

fn read_lines(
    mut editor: DefaultEditor,
    printer: &Printer,
    lines: &mpsc::Sender<Read>,
    resumed: &std::sync::mpsc::Receiver<()>,
) {
    loop {
        let read = match editor.readline(PROMPT) {
            Ok(line) => {
                let columns = editor
                    .dimensions()
                    .map_or(80, |(columns, _)| usize::from(columns));
                erase_echo(printer, &line, columns);
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                Read::Line(line)
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => Read::Quit,
            Err(e) => Read::Failed(e.to_string()),
        };
        let last = !matches!(read, Read::Line(_));
        if lines.blocking_send(read).is_err() || last || resumed.recv().is_err() {
            return;
        }
    }
}

/// Takes the submitted `> line` off the screen: `join` prints it again as
/// `[time] you: line` once it is sent, like the stranger's lines. Written
/// through the printer's lock, so no other line is printed in between.
fn erase_echo(printer: &Printer, line: &str, columns: usize) {
    let rows = (PROMPT.len() + line.chars().count()) / columns.max(1) + 1;
    // Up that many rows, to the first column, and clear to the end of the
    // screen (the prompt is always the last thing on it).
    let _ = lock(printer).print(format!("\x1b[{rows}A\r\x1b[J"));
}
