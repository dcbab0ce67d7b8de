//! Text of unbounded length (an event's fields, an error's text) cut to a bounded length
//! for logs, error messages and metric labels, as the key already is: one hostile event
//! must not write megabytes into a log or a label.

use std::borrow::Cow;
use std::fmt;

/// The most characters of one field that a log line, an error message or a metric label
/// shows; the rest is replaced by a marker that gives the original length.
pub const MAX_FIELD_CHARS: usize = 200;

/// `text` whole when it holds at most [`MAX_FIELD_CHARS`] characters, else its first
/// [`MAX_FIELD_CHARS`] followed by `…[truncated: N bytes]` (N the original length).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::bounded;
/// assert_eq!(bounded("orders.created.v1"), "orders.created.v1");
/// let long = "x".repeat(10_000);
/// assert_eq!(bounded(&long), format!("{}…[truncated: 10000 bytes]", "x".repeat(200)));
/// ```
pub fn bounded(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!(
            "{}…[truncated: {} bytes]",
            &text[..cut],
            text.len()
        )),
    }
}

/// A value's `Display`, cut as [`bounded`] cuts text, without building the whole text:
/// for error values in log fields.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::Bounded;
/// let text = Bounded(format_args!("{}", "y".repeat(500))).to_string();
/// assert!(text.ends_with("…[truncated: 500 bytes]"));
/// assert_eq!(Bounded("short").to_string(), "short");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Bounded<T>(pub T);

impl<T: fmt::Display> fmt::Display for Bounded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cut = Cut {
            out: f,
            chars: 0,
            bytes: 0,
        };
        fmt::write(&mut cut, format_args!("{}", self.0))?;
        let (chars, bytes) = (cut.chars, cut.bytes);
        if chars > MAX_FIELD_CHARS {
            write!(f, "…[truncated: {bytes} bytes]")?;
        }
        Ok(())
    }
}

/// Passes the first [`MAX_FIELD_CHARS`] characters on and counts the rest.
struct Cut<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    /// Characters seen, up to one past the bound.
    chars: usize,
    bytes: usize,
}

impl fmt::Write for Cut<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes += s.len();
        if self.chars > MAX_FIELD_CHARS {
            return Ok(());
        }
        let room = MAX_FIELD_CHARS - self.chars.min(MAX_FIELD_CHARS);
        match s.char_indices().nth(room) {
            None => {
                self.chars += s.chars().count();
                self.out.write_str(s)
            }
            Some((cut, _)) => {
                self.chars = MAX_FIELD_CHARS + 1;
                self.out.write_str(&s[..cut])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary_with_its_length() {
        let exact = "é".repeat(MAX_FIELD_CHARS);
        assert_eq!(bounded(&exact), exact);
        let over = "é".repeat(MAX_FIELD_CHARS + 1);
        assert_eq!(
            bounded(&over),
            format!("{exact}…[truncated: {} bytes]", over.len())
        );
        assert_eq!(Bounded(&over).to_string(), bounded(&over));
        assert_eq!(Bounded(&exact).to_string(), exact);
    }

    #[test]
    fn a_display_written_in_pieces_is_cut_once() {
        struct Pieces;
        impl fmt::Display for Pieces {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for _ in 0..100 {
                    f.write_str("abc")?;
                }
                Ok(())
            }
        }
        let text = Bounded(Pieces).to_string();
        assert_eq!(
            text,
            format!(
                "{}…[truncated: 300 bytes]",
                "abc".repeat(67).split_at(200).0
            )
        );
    }
}
