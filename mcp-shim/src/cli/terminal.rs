//! Making a stranger's text safe to print: a partner must not be able to
//! drive your terminal (clear it, move the cursor, set the title, fake a line
//! from you) with escape sequences or control characters.

/// `text` with every control character, escape sequence introducer and
/// bidirectional override replaced by a visible escape such as `\x1b`, so
/// the terminal shows it instead of obeying it. Newlines become a visible
/// `\n` too: a message is always one line, so it cannot forge the next one.
pub fn neutralise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_dangerous(c) {
            let code = u32::from(c);
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                _ if code <= 0xff => out.push_str(&format!("\\x{code:02x}")),
                _ => out.push_str(&format!("\\u{{{code:x}}}")),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_dangerous(c: char) -> bool {
    c.is_control()
        // Bidi controls can make text render in a misleading order.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        let hostile =
            "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31mred\r\n[12:00] you: rm -rf ~\u{202e}txt.exe";
        let safe = neutralise(hostile);
        assert!(safe.chars().all(|c| !is_dangerous(c)), "{safe:?}");
        assert_eq!(
            safe,
            r"\x1b[2J\x1b]0;pwned\x07\x9b31mred\x0d\n[12:00] you: rm -rf ~\u{202e}txt.exe"
        );
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "héllo, wörld 👋 — ça va? 日本語";
        assert_eq!(neutralise(text), text);
    }
}
