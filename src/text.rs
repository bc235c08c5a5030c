//! `Text`: UTF-8 text kept inside the value when it is short.
//!
//! Every traced request carries the path of what it acted on, built while the request waits,
//! and the command name of its caller. Most are short, so keeping one in a `String` would
//! cost an allocation (and a free on another thread, later) for a few dozen bytes, and
//! sharing one behind an `Arc` would cost two atomic operations on a cache line every session
//! thread touches. A [`Text`] of up to `N` bytes needs neither; a longer one is one boxed
//! string.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of a path kept inside a [`PathText`]; the whole value is then 56 bytes.
pub const PATH_INLINE: usize = 54;

/// A path inside the mount, inline up to [`PATH_INLINE`] bytes.
pub type PathText = Text<PATH_INLINE>;

/// A command name: the kernel keeps at most 15 bytes, which may grow when a name that is not
/// UTF-8 is made text. 24 bytes in all.
pub type Comm = Text<22>;

/// Text, inline when it is at most `N` (under 256) bytes long.
#[derive(Clone)]
pub struct Text<const N: usize>(Repr<N>);

#[derive(Clone)]
enum Repr<const N: usize> {
    /// `bytes[..len]` is valid UTF-8: every constructor copies it from a `str`.
    Inline {
        len: u8,
        bytes: [u8; N],
    },
    Heap(Box<str>),
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        let () = Self::LEN_FITS;
        Text(Repr::Inline {
            len: 0,
            bytes: [0; N],
        })
    }
}

impl<const N: usize> Text<N> {
    /// The inline length is a byte: a `Text` with room for more fails to compile.
    const LEN_FITS: () = assert!(N < 256, "Text<N> keeps its length in a byte");

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid (see `Repr::Inline`); checked anyway rather than trusted. The
            // check is short, and the recorder takes `as_bytes` instead.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }

    /// The text's bytes, without checking them again (they are UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    /// Whether the text is kept inside the value.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }

    /// The absolute path made of `names`, outermost first: `/a/b/c`, or `/` for none.
    /// Names that are not UTF-8 are converted lossily, as `OsStr::to_string_lossy` does.
    pub fn from_names(names: &[&OsStr]) -> Self {
        let () = Self::LEN_FITS;
        let mut len = names.len().max(1);
        for n in names {
            match n.to_str() {
                Some(s) => len += s.len(),
                None => return Self::from_names_lossy(names),
            }
        }
        if len > N {
            return Self::from_names_lossy(names);
        }
        let mut bytes = [0u8; N];
        bytes[0] = b'/';
        let mut at = 0;
        for n in names {
            let s = n.as_encoded_bytes();
            bytes[at] = b'/';
            bytes[at + 1..at + 1 + s.len()].copy_from_slice(s);
            at += 1 + s.len();
        }
        Text(Repr::Inline {
            len: len as u8,
            bytes,
        })
    }

    fn from_names_lossy(names: &[&OsStr]) -> Self {
        let mut path = String::new();
        for n in names {
            path.push('/');
            path.push_str(&n.to_string_lossy());
        }
        if path.is_empty() {
            path.push('/');
        }
        Text::from(path)
    }
}

impl<const N: usize> From<&str> for Text<N> {
    fn from(s: &str) -> Self {
        let () = Self::LEN_FITS;
        if s.len() > N {
            return Text(Repr::Heap(s.into()));
        }
        let mut bytes = [0u8; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Text(Repr::Inline {
            len: s.len() as u8,
            bytes,
        })
    }
}

impl<const N: usize> From<String> for Text<N> {
    fn from(s: String) -> Self {
        if s.len() > N {
            Text(Repr::Heap(s.into_boxed_str()))
        } else {
            Text::from(s.as_str())
        }
    }
}

impl<const N: usize> From<Text<N>> for String {
    fn from(p: Text<N>) -> String {
        match p.0 {
            Repr::Heap(s) => s.into(),
            Repr::Inline { .. } => p.as_str().to_string(),
        }
    }
}

impl<const N: usize> Deref for Text<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for Text<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> Borrow<str> for Text<N> {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> PartialEq for Text<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for Text<N> {}

impl<const N: usize> PartialEq<str> for Text<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Text<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> Hash for Text<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl<const N: usize> PartialOrd for Text<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Text<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> Serialize for Text<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for Text<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn names(v: &[&'static str]) -> Vec<&'static OsStr> {
        v.iter().map(|s| OsStr::new(*s)).collect()
    }

    #[test]
    fn joins_names_into_an_absolute_path_inline_up_to_the_limit() {
        assert_eq!(size_of::<PathText>(), 56);
        assert_eq!(size_of::<Option<PathText>>(), 56);
        let root = PathText::from_names(&[]);
        assert_eq!((root.as_str(), root.is_inline()), ("/", true));
        let p = PathText::from_names(&names(&["a", "bc", "d"]));
        assert_eq!((p.as_str(), p.is_inline()), ("/a/bc/d", true));
        // "/" + 53 bytes is exactly the limit; one more byte goes to the heap.
        let at = PathText::from_names(&[OsStr::new(&"x".repeat(PATH_INLINE - 1))]);
        assert_eq!((at.len(), at.is_inline()), (PATH_INLINE, true));
        let over = PathText::from_names(&[OsStr::new(&"x".repeat(PATH_INLINE))]);
        assert_eq!((over.len(), over.is_inline()), (PATH_INLINE + 1, false));
        assert_eq!(over.as_str(), format!("/{}", "x".repeat(PATH_INLINE)));
    }

    #[test]
    fn converts_names_that_are_not_utf8_lossily() {
        let bad = OsStr::from_bytes(b"a\xffb");
        let p = PathText::from_names(&[OsStr::new("d"), bad]);
        assert_eq!(p.as_str(), "/d/a\u{fffd}b");
        // A multi-byte character is kept whole at the edge of the inline space.
        let edge = format!("{}é", "x".repeat(PATH_INLINE - 3));
        let p = PathText::from_names(&[OsStr::new(&edge)]);
        assert_eq!(
            (p.as_str(), p.is_inline()),
            (format!("/{edge}").as_str(), true)
        );
    }

    #[test]
    fn round_trips_through_strings_and_json() {
        for s in [
            "",
            "/a",
            &"y".repeat(PATH_INLINE),
            &"z".repeat(PATH_INLINE + 1),
        ] {
            let p = PathText::from(s);
            assert_eq!(p, PathText::from(s.to_string()));
            assert_eq!(String::from(p.clone()), s);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            assert_eq!(serde_json::from_str::<PathText>(&json).unwrap(), p);
            assert_eq!(format!("{p}"), s);
            assert_eq!(format!("{p:?}"), format!("{s:?}"));
        }
    }
}
