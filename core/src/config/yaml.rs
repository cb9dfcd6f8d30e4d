//! YAML front end for pipeline files: a located tree and a problem-collecting deserializer.
//!
//! `snodo lint` must report *every* problem of a pipeline file with its file, line:column and
//! YAML path, not just the first serde error, and YAML's implicit typing must not corrupt
//! Italian data (`provincia: NO` is Novara, not `false`; `cap: 00118` is a postal code, not 118).
//! So loading happens in two stages:
//!
//! 1. [`parse`] turns the text into a [`Node`] tree where every value and key carries its
//!    [`Location`]. Parsing uses serde-saphyr with `strict_booleans` and
//!    `leading_zero_numbers_as_strings`; scalars are then normalised from their source text:
//!    only `true`/`false` are booleans, only integers written in canonical decimal form are
//!    [`NodeKind::Int`], and everything else (floats such as `1.50`, `+5`, `0x1F`) stays text,
//!    so that nothing is ever turned into a float (money) or loses leading zeros.
//! 2. [`from_node`] runs a serde `Deserializer` over the tree. It knows the YAML path of every
//!    value, records unknown keys instead of failing on them, turns type errors into plain-words
//!    [`Problem`]s and keeps going after each one, so one call returns all the problems it can
//!    find.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde_saphyr::{MessageFormatter, Spanned};

/// 1-based line and column of a node in its file.
///
/// `0:0` (the default) means "unknown": serde-saphyr can, in rare cases, report an error
/// without a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML value with the location where it is written.
#[derive(Clone, Debug)]
pub struct Node {
    /// Where the value starts; for an alias, where the alias (`*name`) is used.
    pub location: Location,
    /// The value itself.
    pub kind: NodeKind,
}

/// The value of a [`Node`].
///
/// There is deliberately no float variant: non-integer numbers (amounts of money, rates) stay
/// [`NodeKind::Str`] with the text exactly as written, so that `1.50` never becomes `1.5`.
#[derive(Clone, Debug)]
pub enum NodeKind {
    /// `~`, `null` or nothing at all.
    Null,
    /// Exactly `true` or `false` (not `yes`, `no`, `on`, `True`…).
    Bool(bool),
    /// An integer written in canonical decimal form (`42`, `-7`), so that rendering it again
    /// gives back exactly the text of the file.
    Int(i64),
    /// Any other scalar, including quoted text, `00118`, `+5`, `1.50`, `NO`.
    Str(String),
    /// A sequence (`- a` or `[a, b]`).
    Seq(Vec<Node>),
    /// A mapping, in file order, without duplicate keys.
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its location.
#[derive(Clone, Debug)]
pub struct Key {
    /// The key as text (`1: x` gives `"1"`).
    pub name: String,
    /// Where the key is written.
    pub location: Location,
}

/// One problem found in a YAML file, ready to be printed as `file:line:column: path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is.
    pub location: Location,
    /// YAML path of the value concerned, like `steps[2].validate.cap`; `""` for the root or
    /// when unknown (syntax errors).
    pub path: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl fmt::Display for Problem {
    /// Formats as `line:column: path: message`, or `line:column: message` without a path;
    /// callers put the file name in front.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.path, self.message)
        }
    }
}

/// Path of the value under `key` in the mapping at `base`: `a.b`, or `a."x.y"` when the key
/// contains characters that would make the path ambiguous.
#[must_use]
pub fn key_path(base: &str, key: &str) -> String {
    let needs_quotes = key.is_empty()
        || key.chars().any(|c| {
            matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_whitespace() || c.is_control()
        });
    let segment = if needs_quotes {
        format!("{key:?}")
    } else {
        key.to_owned()
    };
    if base.is_empty() {
        segment
    } else {
        format!("{base}.{segment}")
    }
}

/// Path of the `index`-th (0-based) element of the sequence at `base`: `steps[3]`.
#[must_use]
pub fn index_path(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// Finds the node at `path` below `root`: each segment is a mapping key or, for a sequence, a
/// 0-based index written in decimal (`&["steps", "2", "validate"]`).
///
/// Meant for callers that validate sub-trees separately, e.g. each pipeline step on its own so
/// that one bad step cannot hide problems in the next ones.
#[must_use]
pub fn node_at<'a>(root: &'a Node, path: &[&str]) -> Option<&'a Node> {
    path.iter()
        .try_fold(root, |node, segment| match &node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(key, _)| key.name == *segment)
                .map(|(_, value)| value),
            NodeKind::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// Parses `text` and deserializes the whole document into `T`: [`parse`] then [`from_node`]
/// at the root.
///
/// # Errors
///
/// The parse problem, or all the problems [`from_node`] found.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Problem>> {
    let root = parse(text).map_err(|problem| vec![problem])?;
    from_node(&root, "")
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses one YAML document into a located tree.
///
/// A syntax error, a second document, a budget breach (serde-saphyr's default budget: at most
/// 64 levels of nesting, 250 000 nodes, bounded alias expansion, so deep nesting and alias
/// bombs fail cleanly) or a duplicate key gives one [`Problem`] with the location serde-saphyr
/// reports. Only the first such problem is returned: after a syntax error the rest of the
/// file cannot be trusted.
///
/// # Errors
///
/// The first syntax, budget or duplicate-key problem of the file.
pub fn parse(text: &str) -> Result<Node, Problem> {
    // serde-saphyr recurses through serde (and `Spanned`) once per nesting level; at the 64
    // levels its budget allows, a valid file needs 2 to 4 MiB of stack in debug builds, more
    // than the 2 MiB of spawned threads and tokio workers. Parse on a thread whose stack is
    // sized for the worst case, so that no file can overflow the caller's stack.
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("yaml-parse".to_owned())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_on_this_thread(text));
        match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(Problem {
                    location: Location::default(),
                    path: String::new(),
                    message: "internal error while reading the YAML file".to_owned(),
                })
            }),
            // No thread available (resource limits): parsing here is still fine for all but
            // pathologically nested files.
            Err(_) => parse_on_this_thread(text),
        }
    })
}

/// Stack of the parsing thread: generous, since it is only reserved, not committed, memory.
const PARSER_STACK_BYTES: usize = 16 << 20;

fn parse_on_this_thread(text: &str) -> Result<Node, Problem> {
    // Building the tree through serde-saphyr's public `Spanned<T>` (rather than from
    // saphyr-parser events) keeps its budget, alias, merge-key and scalar-typing rules.
    // `Spanned` gives the byte span of every scalar, from which the exact source text of numbers
    // and booleans is recovered (see `normalise_*`).
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        // `1_000` or `0xFF_FF` in a data file is far more likely an identifier than a number.
        underscored_numbers_as_strings: true,
        // `.inf`/`.nan` reach the visitor as floats and become text like every other float,
        // instead of failing the whole file.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        // Duplicates are detected below, where the YAML path is known and the message can name
        // both occurrences; serde-saphyr's own message talks about its `Options`.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // Problems carry the location; the caller decides how to show it.
        with_snippet: false,
    };
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(text, options)
        .map_err(|error| saphyr_problem(&error))?;
    build_node(raw, text, "")
}

/// Converts a serde-saphyr error into a [`Problem`] without the "at line X, column Y" suffix.
fn saphyr_problem(error: &serde_saphyr::Error) -> Problem {
    let location = error
        .location()
        .map(|l| saphyr_location(&l))
        .unwrap_or_default();
    let message = serde_saphyr::UserMessageFormatter.format_message(error.without_snippet());
    Problem {
        location,
        path: String::new(),
        message: sanitize(&message),
    }
}

fn saphyr_location(location: &serde_saphyr::Location) -> Location {
    Location {
        line: usize::try_from(location.line()).unwrap_or(usize::MAX),
        column: usize::try_from(location.column()).unwrap_or(usize::MAX),
    }
}

/// The exact source text of a scalar, when serde-saphyr knows its byte span.
fn source_text<'t>(text: &'t str, location: &serde_saphyr::Location) -> Option<&'t str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
}

/// Quoted scalars can only reach the number/boolean visitors through an explicit tag
/// (`!!int "42"`); the user asked for the typed value then, not for the text.
fn is_quoted(source: &str) -> bool {
    source.starts_with('"') || source.starts_with('\'')
}

/// The value as serde-saphyr's `deserialize_any` sees it, before normalisation.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    /// Only for integers above `i128::MAX`.
    BigUint(u128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> de::Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        de::Deserialize::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        de::Deserialize::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        Ok(i128::try_from(v).map_or(Raw::BigUint(v), Raw::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        // `!!binary` values: pipelines have no use for bytes, keep them readable.
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

/// Converts the raw tree into [`Node`]s, normalising scalars and rejecting duplicate keys.
/// Recursion depth is bounded by serde-saphyr's nesting budget.
fn build_node(raw: Spanned<Raw>, text: &str, path: &str) -> Result<Node, Problem> {
    let location = saphyr_location(&raw.referenced);
    // `defined` points at the anchored scalar for aliases, so this is the text as written.
    let source = source_text(text, &raw.defined);
    let kind = match raw.value {
        Raw::Null => NodeKind::Null,
        Raw::Bool(value) => normalise_bool(value, source),
        Raw::Int(value) => normalise_int(value, source),
        Raw::BigUint(value) => normalise_other_number(value.to_string(), source),
        Raw::Float(value) => normalise_other_number(value.to_string(), source),
        Raw::Str(value) => NodeKind::Str(value),
        Raw::Seq(items) => NodeKind::Seq(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| build_node(item, text, &index_path(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(raw_entries) => {
            let mut first_seen: HashMap<String, Location> = HashMap::new();
            let mut entries = Vec::with_capacity(raw_entries.len());
            for (raw_key, raw_value) in raw_entries {
                let key = build_key(raw_key, text, path)?;
                if let Some(first) = first_seen.get(&key.name) {
                    return Err(Problem {
                        location: key.location,
                        path: path.to_owned(),
                        message: format!(
                            "duplicate key `{}` (first defined at line {}, column {})",
                            sanitize(&key.name),
                            first.line,
                            first.column
                        ),
                    });
                }
                first_seen.insert(key.name.clone(), key.location);
                let value = build_node(raw_value, text, &key_path(path, &key.name))?;
                entries.push((key, value));
            }
            NodeKind::Map(entries)
        }
    };
    Ok(Node { location, kind })
}

/// Only the exact spellings `true` and `false` are booleans: `True`/`TRUE` (accepted by YAML
/// 1.2 core and serde-saphyr's `strict_booleans`) stay text.
fn normalise_bool(value: bool, source: Option<&str>) -> NodeKind {
    match source {
        Some("true" | "false") => NodeKind::Bool(value),
        Some(text) if !is_quoted(text) => NodeKind::Str(text.to_owned()),
        _ => NodeKind::Bool(value),
    }
}

/// An integer stays [`NodeKind::Int`] only when its canonical rendering is exactly the source
/// text, so that rendering it as a string gives back what the user wrote: `+5`, `-0`, `0x1F`,
/// `0o17` and integers beyond `i64` become text.
fn normalise_int(value: i128, source: Option<&str>) -> NodeKind {
    let int = i64::try_from(value).ok();
    match (int, source) {
        (Some(int), Some(text)) if is_quoted(text) || int.to_string() == text => NodeKind::Int(int),
        (_, Some(text)) if !is_quoted(text) => NodeKind::Str(text.to_owned()),
        (Some(int), _) => NodeKind::Int(int),
        (None, _) => NodeKind::Str(value.to_string()),
    }
}

/// Floats and huge integers are kept as the text written in the file.
fn normalise_other_number(rendered: String, source: Option<&str>) -> NodeKind {
    match source {
        Some(text) if !is_quoted(text) => NodeKind::Str(text.to_owned()),
        _ => NodeKind::Str(rendered),
    }
}

fn build_key(raw: Spanned<Raw>, text: &str, path: &str) -> Result<Key, Problem> {
    let location = saphyr_location(&raw.referenced);
    let source = source_text(text, &raw.defined).filter(|s| !is_quoted(s));
    let name = match raw.value {
        Raw::Str(name) => name,
        Raw::Null => source.unwrap_or_default().to_owned(),
        Raw::Bool(value) => source.map_or_else(|| value.to_string(), str::to_owned),
        Raw::Int(value) => source.map_or_else(|| value.to_string(), str::to_owned),
        Raw::BigUint(value) => source.map_or_else(|| value.to_string(), str::to_owned),
        Raw::Float(value) => source.map_or_else(|| value.to_string(), str::to_owned),
        Raw::Seq(_) | Raw::Map(_) => {
            return Err(Problem {
                location,
                path: path.to_owned(),
                message: "a list or a mapping cannot be used as a key".to_owned(),
            });
        }
    };
    Ok(Key { name, location })
}

// ---------------------------------------------------------------------------------------------
// Deserialization
// ---------------------------------------------------------------------------------------------

/// Bounds the re-runs of the deserialization (see [`from_node`]) to about this many node
/// visits in total. Each run after the first exists only because the previous one found a new
/// problem, and a run costs one visit per node, so a small file can afford many more runs than
/// a huge one.
const PASS_WORK_BUDGET: usize = 10_000_000;
/// Runs allowed however large the tree.
const MIN_PASSES: usize = 16;
/// Runs allowed however small the tree.
const MAX_PASSES: usize = 4096;
/// Nesting limit for trees not built by [`parse`] (which already stops at 64 levels).
const MAX_TREE_DEPTH: usize = 256;
/// Nesting limit for stand-in values: a recursive type whose first variant recurses would
/// otherwise recurse forever.
const MAX_PLACEHOLDER_DEPTH: usize = 32;

/// Deserializes `node` into `T`, collecting every problem found.
///
/// `path` is the YAML path of `node` (`""` for the root, `"steps[2]"` for a sub-tree taken
/// with [`node_at`]); it prefixes every reported path.
///
/// Keys that `T` does not know are reported ("unknown key", with a "did you mean" suggestion)
/// and skipped, so `#[serde(deny_unknown_fields)]` is not needed. When a value has the wrong
/// type, the problem is recorded and a stand-in value is used so that the rest of the tree is
/// still checked. Errors raised by the target type itself (a failed `FromStr` in a
/// `deserialize_with`, a missing key) abort serde's derived code; then the deserialization is
/// run again with a stand-in at that node (or the missing key filled in), so that later
/// problems are found too; if the target type rejects even the stand-in, the enclosing list
/// element or map entry is left out in the next run. The problems come back sorted by
/// location.
///
/// # Errors
///
/// Every problem found, sorted by location; never an empty list.
pub fn from_node<T: DeserializeOwned>(node: &Node, path: &str) -> Result<T, Vec<Problem>> {
    let ctx = Ctx::default();
    let passes = (PASS_WORK_BUDGET / count_nodes(node)).clamp(MIN_PASSES, MAX_PASSES);
    for _ in 0..passes {
        ctx.progress.set(false);
        match guard(&ctx, node, path.to_owned(), 0, false, |de| {
            T::deserialize(de)
        }) {
            Ok(value) if ctx.problems.borrow().is_empty() => return Ok(value),
            Ok(_) => break,
            // Another pass can only help if this one learned something new.
            Err(_) if !ctx.progress.get() => break,
            Err(_) => {}
        }
    }
    let mut problems = ctx.problems.into_inner();
    if problems.is_empty() {
        // Not expected (every failure records a problem), but an `Err` must say something.
        problems.push(Problem {
            location: node.location,
            path: path.to_owned(),
            message: "the value could not be read".to_owned(),
        });
    }
    problems.sort_by_key(|p| (p.location.line, p.location.column));
    Err(problems)
}

/// Number of nodes in the tree (at least 1), without recursion.
fn count_nodes(root: &Node) -> usize {
    let mut count = 0;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        count += 1;
        match &node.kind {
            NodeKind::Seq(items) => stack.extend(items),
            NodeKind::Map(entries) => stack.extend(entries.iter().map(|(_, value)| value)),
            _ => {}
        }
    }
    count
}

/// State shared by all the deserializers of one [`from_node`] call, across its passes.
#[derive(Default)]
struct Ctx {
    /// Problems found so far, without duplicates (later passes find the same ones again).
    problems: RefCell<Vec<Problem>>,
    /// Nodes replaced by a stand-in value because they already have a problem. Nodes are
    /// identified by address: the tree is borrowed, unchanged, for the whole call.
    placeholders: RefCell<HashSet<*const Node>>,
    /// List elements and mapping entries (of plain maps, not structs) left out in later passes
    /// because even a stand-in for them is rejected by the target type.
    skipped: RefCell<HashSet<*const Node>>,
    /// Mappings (deserialized as structs) and the required keys missing from them, which get
    /// stand-in values in later passes.
    missing: RefCell<HashMap<*const Node, Vec<&'static str>>>,
    /// Whether the current pass added a stand-in, i.e. whether another pass can go further.
    progress: Cell<bool>,
}

impl Ctx {
    fn record(&self, location: Location, path: &str, message: String) {
        let problem = Problem {
            location,
            path: path.to_owned(),
            message,
        };
        let mut problems = self.problems.borrow_mut();
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }

    fn use_placeholder_for(&self, node: &Node) {
        if self
            .placeholders
            .borrow_mut()
            .insert(std::ptr::from_ref(node))
        {
            self.progress.set(true);
        }
    }

    fn is_placeholder(&self, node: &Node) -> bool {
        self.placeholders
            .borrow()
            .contains(&std::ptr::from_ref(node))
    }

    fn skip(&self, node: &Node) {
        if self.skipped.borrow_mut().insert(std::ptr::from_ref(node)) {
            self.progress.set(true);
        }
    }

    fn is_skipped(&self, node: &Node) -> bool {
        self.skipped.borrow().contains(&std::ptr::from_ref(node))
    }

    fn add_missing(&self, node: &Node, field: &'static str) {
        let mut missing = self.missing.borrow_mut();
        let fields = missing.entry(std::ptr::from_ref(node)).or_default();
        if !fields.contains(&field) {
            fields.push(field);
            self.progress.set(true);
        }
    }

    fn missing_fields(&self, node: &Node) -> Vec<&'static str> {
        self.missing
            .borrow()
            .get(&std::ptr::from_ref(node))
            .cloned()
            .unwrap_or_default()
    }
}

/// Error type of the deserializers. Problems are recorded in [`Ctx`] as soon as their location
/// is known; the error then only unwinds serde's code.
#[derive(Debug)]
enum DeError {
    /// Already recorded (or caused by a stand-in value): just unwind.
    Reported,
    /// A stand-in value was rejected by the target type (say, `""` by a `FromStr`
    /// validation): unwind to the nearest value that can be left out (see [`guard`]).
    StandInFailed,
    /// Raised by derived code for a required key absent from a mapping.
    MissingField(&'static str),
    /// Raised by the target type; located by the nearest [`guard`].
    Message(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Reported => f.write_str("problems were found"),
            DeError::StandInFailed => f.write_str("a stand-in value was rejected"),
            DeError::MissingField(field) => write!(f, "missing key `{field}`"),
            DeError::Message(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Message(msg.to_string())
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::Message(format!(
            "expected {expected}, found {}",
            describe_unexpected(&unexpected)
        ))
    }

    fn invalid_value(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::Message(format!(
            "invalid value {}: expected {expected}",
            describe_unexpected(&unexpected)
        ))
    }

    fn invalid_length(len: usize, expected: &dyn de::Expected) -> Self {
        DeError::Message(format!("expected {expected}, found {len} items"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::Message(format!(
            "unknown value `{}`; expected one of: {}{}",
            sanitize(variant),
            expected.join(", "),
            did_you_mean(variant, expected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::Message(format!(
            "unknown key `{}`{}",
            sanitize(field),
            did_you_mean(field, expected)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField(field)
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::Message(format!("duplicate key `{field}`"))
    }
}

fn describe_unexpected(unexpected: &de::Unexpected<'_>) -> String {
    match unexpected {
        de::Unexpected::Str(s) => format!("the text `{}`", shorten(s)),
        de::Unexpected::Bool(b) => format!("`{b}`"),
        de::Unexpected::Signed(n) => format!("the number `{n}`"),
        de::Unexpected::Unsigned(n) => format!("the number `{n}`"),
        de::Unexpected::Float(n) => format!("the number `{n}`"),
        de::Unexpected::Unit | de::Unexpected::Option => "nothing (null)".to_owned(),
        de::Unexpected::Seq => "a list".to_owned(),
        de::Unexpected::Map => "a mapping".to_owned(),
        other => other.to_string(),
    }
}

/// How a node is named in "found …" messages.
fn describe(node: &Node) -> String {
    match &node.kind {
        NodeKind::Null => "nothing (null)".to_owned(),
        NodeKind::Bool(b) => format!("`{b}`"),
        NodeKind::Int(n) => format!("the number `{n}`"),
        NodeKind::Str(s) => format!("the text `{}`", shorten(s)),
        NodeKind::Seq(_) => "a list".to_owned(),
        NodeKind::Map(_) => "a mapping".to_owned(),
    }
}

/// Keeps messages on one line and of reasonable length whatever the file contains.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    let mut out = sanitize(&text.chars().take(MAX_CHARS).collect::<String>());
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Escapes control characters (newlines, terminal escapes) coming from the file.
fn sanitize(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text.to_owned()
    }
}

/// Levenshtein distance over characters (two rows, O(len(a)·len(b))); names are short.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate `word` was most likely a typo for: the closest one within edit distance 2
/// (Levenshtein, over characters), provided the distance is smaller than the word's length (a
/// one-letter word is "within 2" of every two-letter name, which would be noise). For "did you
/// mean" hints.
#[must_use]
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_len = word.chars().count();
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2 && *d < word_len)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    suggest(word, candidates).map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

/// `OnError` → `on_error`, for messages like "unknown `on_error` kind".
fn type_label(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Deserializes the value at `node` with `f`, making this the place where errors raised by the
/// target type get their location: every value below the root is reached through here (the
/// root, sequence elements, mapping values, enum contents). `skippable` tells whether the
/// container can leave this value out (list elements, entries of plain maps).
fn guard<'de, 'c, R>(
    ctx: &'c Ctx,
    node: &'de Node,
    path: String,
    depth: usize,
    skippable: bool,
    f: impl FnOnce(ValueDe<'de, 'c>) -> Result<R, DeError>,
) -> Result<R, DeError> {
    let result = if ctx.is_placeholder(node) {
        f(ValueDe::Placeholder(Placeholder { depth: 0 }))
    } else if depth > MAX_TREE_DEPTH {
        ctx.record(
            node.location,
            &path,
            "the value is nested too deeply".to_owned(),
        );
        return Err(DeError::Reported);
    } else {
        f(ValueDe::Node(NodeDe {
            node,
            path: path.clone(),
            ctx,
            depth,
        }))
    };
    match result {
        Ok(value) => Ok(value),
        Err(DeError::Reported) => Err(DeError::Reported),
        // The node has a stand-in (from an earlier pass or from this very call): the error is
        // a consequence of the stand-in value (say, an empty string failing validation), not a
        // new problem. Leave the value out next time if possible, else let an enclosing value
        // be left out.
        Err(_) if ctx.is_placeholder(node) => Err(stand_in_failed(ctx, node, skippable)),
        Err(DeError::StandInFailed) => Err(stand_in_failed(ctx, node, skippable)),
        Err(DeError::MissingField(field)) => {
            ctx.record(node.location, &path, format!("missing key `{field}`"));
            ctx.add_missing(node, field);
            Err(DeError::Reported)
        }
        Err(DeError::Message(message)) => {
            ctx.record(node.location, &path, sanitize(&message));
            ctx.use_placeholder_for(node);
            Err(DeError::Reported)
        }
    }
}

fn stand_in_failed(ctx: &Ctx, node: &Node, skippable: bool) -> DeError {
    if skippable {
        ctx.skip(node);
        DeError::Reported
    } else {
        DeError::StandInFailed
    }
}

/// Either the real node or a stand-in for it.
enum ValueDe<'de, 'c> {
    Node(NodeDe<'de, 'c>),
    Placeholder(Placeholder),
}

macro_rules! forward_value_de {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self {
                ValueDe::Node(de) => de.$method(visitor),
                ValueDe::Placeholder(de) => de.$method(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for ValueDe<'de, '_> {
    type Error = DeError;

    forward_value_de! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_unit_struct(name, visitor),
            ValueDe::Placeholder(de) => de.deserialize_unit_struct(name, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_newtype_struct(name, visitor),
            ValueDe::Placeholder(de) => de.deserialize_newtype_struct(name, visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_tuple(len, visitor),
            ValueDe::Placeholder(de) => de.deserialize_tuple(len, visitor),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_tuple_struct(name, len, visitor),
            ValueDe::Placeholder(de) => de.deserialize_tuple_struct(name, len, visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_struct(name, fields, visitor),
            ValueDe::Placeholder(de) => de.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Node(de) => de.deserialize_enum(name, variants, visitor),
            ValueDe::Placeholder(de) => de.deserialize_enum(name, variants, visitor),
        }
    }
}

/// Deserializer over one real node.
struct NodeDe<'de, 'c> {
    node: &'de Node,
    path: String,
    ctx: &'c Ctx,
    depth: usize,
}

impl<'de, 'c> NodeDe<'de, 'c> {
    /// Records a problem at this node, marks it for a stand-in and carries on with the stand-in
    /// so that the rest of the tree is still checked in this pass.
    fn problem<R>(
        self,
        message: String,
        recover: impl FnOnce(Placeholder) -> Result<R, DeError>,
    ) -> Result<R, DeError> {
        self.ctx.record(self.node.location, &self.path, message);
        self.ctx.use_placeholder_for(self.node);
        recover(Placeholder { depth: 0 })
    }

    fn mismatch<R>(
        self,
        expected: &str,
        recover: impl FnOnce(Placeholder) -> Result<R, DeError>,
    ) -> Result<R, DeError> {
        let message = format!("expected {expected}, found {}", describe(self.node));
        self.problem(message, recover)
    }

    /// Integers are accepted as written or as text that parses cleanly (`"42"`).
    fn integer(&self) -> Option<i128> {
        match &self.node.kind {
            NodeKind::Int(n) => Some(i128::from(*n)),
            NodeKind::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match &self.node.kind {
            // Precision loss only beyond 2^53, far outside what a configuration holds.
            NodeKind::Int(n) => Some(*n as f64),
            NodeKind::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    fn seq_access(&self, items: &'de [Node]) -> NodeSeq<'de, 'c> {
        NodeSeq {
            items: items.iter().enumerate(),
            path: self.path.clone(),
            ctx: self.ctx,
            depth: self.depth,
        }
    }

    fn map_access(
        &self,
        entries: &'de [(Key, Node)],
        fields: Option<&'static [&'static str]>,
    ) -> NodeMap<'de, 'c> {
        let missing = if fields.is_some() {
            self.ctx.missing_fields(self.node)
        } else {
            Vec::new()
        };
        NodeMap {
            node: self.node,
            entries: entries.iter(),
            fields,
            missing: missing.into_iter(),
            pending: None,
            path: self.path.clone(),
            ctx: self.ctx,
            depth: self.depth,
        }
    }

    fn unknown_variant<R>(
        self,
        label: &str,
        variant: &str,
        location: Location,
        variants: &'static [&'static str],
        recover: impl FnOnce(Placeholder) -> Result<R, DeError>,
    ) -> Result<R, DeError> {
        let message = format!(
            "unknown `{label}` kind `{}`; expected one of: {}{}",
            shorten(variant),
            variants.join(", "),
            did_you_mean(variant, variants)
        );
        self.ctx.record(location, &self.path, message);
        self.ctx.use_placeholder_for(self.node);
        recover(Placeholder { depth: 0 })
    }
}

macro_rules! node_integer {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.integer().map(<$ty>::try_from) {
                Some(Ok(value)) => visitor.$visit(value),
                Some(Err(_)) => {
                    let expected = format!("an integer from {} to {}", <$ty>::MIN, <$ty>::MAX);
                    self.mismatch(&expected, |p| p.$method(visitor))
                }
                None => self.mismatch("an integer", |p| p.$method(visitor)),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for NodeDe<'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(n) => visitor.visit_i64(*n),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => visitor.visit_seq(self.seq_access(items)),
            NodeKind::Map(entries) => visitor.visit_map(self.map_access(entries, None)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            _ => self.mismatch("`true` or `false`", |p| p.deserialize_bool(visitor)),
        }
    }

    node_integer! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
        deserialize_u128 visit_u128 u128;
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.integer() {
            Some(value) => visitor.visit_i128(value),
            None => self.mismatch("an integer", |p| p.deserialize_i128(visitor)),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.float() {
            Some(value) => visitor.visit_f64(value),
            None => self.mismatch("a number", |p| p.deserialize_f64(visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let NodeKind::Str(s) = &self.node.kind {
            let mut chars = s.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                return visitor.visit_char(c);
            }
        }
        self.mismatch("a single character", |p| p.deserialize_char(visitor))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            // Exact source text: `Int` only holds integers whose rendering is the source text.
            NodeKind::Int(n) => visitor.visit_string(n.to_string()),
            NodeKind::Bool(b) => visitor.visit_borrowed_str(if *b { "true" } else { "false" }),
            _ => self.mismatch("text", |p| p.deserialize_str(visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Str(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
            NodeKind::Seq(items) => visitor.visit_seq(self.seq_access(items)),
            _ => self.mismatch("text", |p| p.deserialize_bytes(visitor)),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => visitor.visit_unit(),
            _ => self.mismatch("nothing (null)", |p| p.deserialize_unit(visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(self.seq_access(items)),
            _ => self.mismatch("a list", |p| p.deserialize_seq(visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) if items.len() == len => visitor.visit_seq(self.seq_access(items)),
            NodeKind::Seq(items) => {
                let message = format!(
                    "expected a list of {len} items, found {} items",
                    items.len()
                );
                self.problem(message, |p| p.deserialize_tuple(len, visitor))
            }
            _ => {
                let expected = format!("a list of {len} items");
                self.mismatch(&expected, |p| p.deserialize_tuple(len, visitor))
            }
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(self.map_access(entries, None)),
            _ => self.mismatch("a mapping", |p| p.deserialize_map(visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(self.map_access(entries, Some(fields))),
            _ => self.mismatch("a mapping", |p| p.deserialize_struct("", fields, visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let label = type_label(name);
        let recover = move |p: Placeholder, visitor: V| p.deserialize_enum(name, variants, visitor);
        // Borrowed for 'de, independently of `self`, which is handed over to the variant.
        let node: &'de Node = self.node;
        match &node.kind {
            // A unit variant written as plain text: `on_error: skip`.
            NodeKind::Str(variant) => {
                if variants.contains(&variant.as_str()) {
                    visitor.visit_enum(NodeEnum {
                        variant,
                        content: None,
                        de: self,
                    })
                } else {
                    let location = node.location;
                    self.unknown_variant(&label, variant, location, variants, |p| {
                        recover(p, visitor)
                    })
                }
            }
            NodeKind::Map(entries) => match entries.as_slice() {
                // `variant: content`.
                [(key, content)] if variants.contains(&key.name.as_str()) => {
                    visitor.visit_enum(NodeEnum {
                        variant: &key.name,
                        content: Some(content),
                        de: self,
                    })
                }
                [(key, _)] => {
                    self.unknown_variant(&label, &key.name, key.location, variants, |p| {
                        recover(p, visitor)
                    })
                }
                [] => {
                    let message = format!(
                        "expected one `{label}` kind as key (one of: {}), found an empty mapping",
                        variants.join(", ")
                    );
                    self.problem(message, |p| recover(p, visitor))
                }
                _ => {
                    let keys: Vec<String> = entries
                        .iter()
                        .map(|(k, _)| format!("`{}`", shorten(&k.name)))
                        .collect();
                    let message = format!(
                        "expected exactly one `{label}` kind as key (one of: {}), found {} keys: {}; \
                         are the settings indented under their kind?",
                        variants.join(", "),
                        entries.len(),
                        keys.join(", ")
                    );
                    self.problem(message, |p| recover(p, visitor))
                }
            },
            _ => {
                let expected = format!("a `{label}` kind (one of: {})", variants.join(", "));
                self.mismatch(&expected, |p| recover(p, visitor))
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

/// Sequence access over real elements, each reached through [`guard`].
struct NodeSeq<'de, 'c> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    path: String,
    ctx: &'c Ctx,
    depth: usize,
}

impl<'de> SeqAccess<'de> for NodeSeq<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let ctx = self.ctx;
        let Some((index, item)) = self.items.find(|(_, item)| !ctx.is_skipped(item)) else {
            return Ok(None);
        };
        let path = index_path(&self.path, index);
        guard(ctx, item, path, self.depth + 1, true, |de| {
            seed.deserialize(de)
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// What the next `next_value_seed` call deserializes.
enum PendingValue<'de> {
    Node(&'de Key, &'de Node),
    /// A stand-in for a required key missing from the file (found in an earlier pass).
    Missing,
}

/// Mapping access. For structs (`fields` is `Some`) unknown keys are reported and skipped, and
/// keys found missing by an earlier pass get stand-in values at the end.
struct NodeMap<'de, 'c> {
    node: &'de Node,
    entries: std::slice::Iter<'de, (Key, Node)>,
    fields: Option<&'static [&'static str]>,
    missing: std::vec::IntoIter<&'static str>,
    pending: Option<PendingValue<'de>>,
    path: String,
    ctx: &'c Ctx,
    depth: usize,
}

impl NodeMap<'_, '_> {
    fn is_unknown(&self, key: &Key) -> bool {
        self.fields
            .is_some_and(|fields| !fields.contains(&key.name.as_str()))
    }

    fn report_unknown(&self, key: &Key) {
        let fields = self.fields.unwrap_or_default();
        let hint = match suggest(&key.name, fields) {
            Some(s) => format!(" (did you mean `{s}`?)"),
            None if fields.is_empty() => " (no keys are expected here)".to_owned(),
            None => format!(" (known keys: {})", fields.join(", ")),
        };
        let message = format!("unknown key `{}`{hint}", shorten(&key.name));
        self.ctx.record(key.location, &self.path, message);
    }
}

impl<'de> MapAccess<'de> for NodeMap<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        while let Some((key, value)) = self.entries.next() {
            if self.fields.is_none() && self.ctx.is_skipped(value) {
                continue;
            }
            if self.is_unknown(key) {
                self.report_unknown(key);
                continue;
            }
            self.pending = Some(PendingValue::Node(key, value));
            let key_de = KeyDe {
                key,
                path: &self.path,
                ctx: self.ctx,
            };
            return match seed.deserialize(key_de) {
                Ok(k) => Ok(Some(k)),
                Err(DeError::Reported) => Err(DeError::Reported),
                // A key the target type rejects (a map keyed by an enum, say): report it at
                // the key and replace the whole mapping by a stand-in in later passes.
                Err(error) => {
                    self.ctx
                        .record(key.location, &self.path, sanitize(&error.to_string()));
                    self.ctx.use_placeholder_for(self.node);
                    Err(DeError::Reported)
                }
            };
        }
        if let Some(field) = self.missing.next() {
            self.pending = Some(PendingValue::Missing);
            return seed
                .deserialize(IntoDeserializer::<DeError>::into_deserializer(field))
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.pending.take() {
            Some(PendingValue::Node(key, value)) => {
                let path = key_path(&self.path, &key.name);
                let skippable = self.fields.is_none();
                let result = guard(self.ctx, value, path, self.depth + 1, skippable, |de| {
                    seed.deserialize(de)
                });
                if result.is_err() {
                    // serde's derived code stops at the first failing field: report the unknown
                    // keys that follow now, as this mapping may never be read further (if it
                    // ends up left out).
                    for (key, _) in self.entries.clone() {
                        if self.is_unknown(key) {
                            self.report_unknown(key);
                        }
                    }
                }
                result
            }
            Some(PendingValue::Missing) => seed
                .deserialize(Placeholder { depth: 0 })
                .map_err(|_| DeError::StandInFailed),
            None => Err(DeError::Message(
                "internal error: value requested before its key".to_owned(),
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() + self.missing.len())
    }
}

/// Deserializer for a mapping key: text, or an integer/boolean written as text.
struct KeyDe<'de, 'p, 'c> {
    key: &'de Key,
    path: &'p str,
    ctx: &'c Ctx,
}

impl KeyDe<'_, '_, '_> {
    fn mismatch(&self, expected: &str) {
        let message = format!(
            "expected {expected} as key, found the text `{}`",
            shorten(&self.key.name)
        );
        self.ctx.record(self.key.location, self.path, message);
    }
}

macro_rules! key_integer {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.key.name.parse::<$ty>() {
                Ok(value) => visitor.$visit(value),
                Err(_) => {
                    // Carry on with a stand-in key; the problem is recorded.
                    self.mismatch("an integer");
                    visitor.$visit(0)
                }
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for KeyDe<'de, '_, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_str(&self.key.name)
    }

    key_integer! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_i128 visit_i128 i128;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
        deserialize_u128 visit_u128 u128;
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.key.name.as_str() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => {
                self.mismatch("`true` or `false`");
                visitor.visit_bool(false)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Only unit variants can be keys; serde's string access reports the others.
        visitor.visit_enum(IntoDeserializer::<DeError>::into_deserializer(
            self.key.name.as_str(),
        ))
    }

    serde::forward_to_deserialize_any! {
        f32 f64 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map
        struct identifier ignored_any
    }
}

/// Enum access for a known variant; `content` is `None` for the plain-text form.
struct NodeEnum<'de, 'c> {
    variant: &'de str,
    content: Option<&'de Node>,
    de: NodeDe<'de, 'c>,
}

impl<'de, 'c> EnumAccess<'de> for NodeEnum<'de, 'c> {
    type Error = DeError;
    type Variant = NodeVariant<'de, 'c>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let value =
            seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(self.variant))?;
        Ok((
            value,
            NodeVariant {
                variant: self.variant,
                content: self.content,
                de: self.de,
            },
        ))
    }
}

struct NodeVariant<'de, 'c> {
    variant: &'de str,
    content: Option<&'de Node>,
    de: NodeDe<'de, 'c>,
}

impl<'de, 'c> NodeVariant<'de, 'c> {
    /// Deserializes the content through [`guard`] (at path `enum_path.variant`), or reports
    /// a variant written as plain text although it needs settings.
    fn content<R>(
        self,
        f: impl FnOnce(ValueDe<'de, 'c>) -> Result<R, DeError>,
    ) -> Result<R, DeError> {
        match self.content {
            Some(content) => {
                let path = key_path(&self.de.path, self.variant);
                guard(self.de.ctx, content, path, self.de.depth + 1, false, f)
            }
            None => {
                let message = format!(
                    "`{0}` needs settings: write `{0}:` followed by them",
                    self.variant
                );
                self.de.problem(message, |p| f(ValueDe::Placeholder(p)))
            }
        }
    }
}

impl<'de> VariantAccess<'de> for NodeVariant<'de, '_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None
            | Some(Node {
                kind: NodeKind::Null,
                ..
            }) => Ok(()),
            Some(content) => {
                // Nothing to unwind: the value is simply ignored after being reported.
                let path = key_path(&self.de.path, self.variant);
                let message = format!(
                    "`{}` takes no settings, found {}",
                    self.variant,
                    describe(content)
                );
                self.de.ctx.record(content.location, &path, message);
                Ok(())
            }
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        self.content(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.content(|de| de.deserialize_tuple(len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.content(|de| de.deserialize_struct("", fields, visitor))
    }
}

// ---------------------------------------------------------------------------------------------
// Stand-in values
// ---------------------------------------------------------------------------------------------

/// Produces a harmless value of whatever shape is requested (0, "", empty list, a struct whose
/// fields are all stand-ins, the first variant of an enum). It replaces a node that already
/// has a problem so that serde's derived code can go on and the rest of the tree gets checked;
/// the value itself is never returned to the caller, since a problem was recorded.
#[derive(Clone, Copy)]
struct Placeholder {
    depth: usize,
}

impl Placeholder {
    fn child(self) -> Result<Self, DeError> {
        if self.depth >= MAX_PLACEHOLDER_DEPTH {
            Err(DeError::StandInFailed)
        } else {
            Ok(Placeholder {
                depth: self.depth + 1,
            })
        }
    }
}

macro_rules! placeholder_scalar {
    ($($method:ident $visit:ident $value:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit($value)
        }
    )*};
}

impl<'de> Deserializer<'de> for Placeholder {
    type Error = DeError;

    placeholder_scalar! {
        deserialize_bool visit_bool false;
        deserialize_i8 visit_i8 0;
        deserialize_i16 visit_i16 0;
        deserialize_i32 visit_i32 0;
        deserialize_i64 visit_i64 0;
        deserialize_i128 visit_i128 0;
        deserialize_u8 visit_u8 0;
        deserialize_u16 visit_u16 0;
        deserialize_u32 visit_u32 0;
        deserialize_u64 visit_u64 0;
        deserialize_u128 visit_u128 0;
        deserialize_f32 visit_f32 0.0;
        deserialize_f64 visit_f64 0.0;
        deserialize_char visit_char ' ';
        deserialize_str visit_str "";
        deserialize_string visit_str "";
        deserialize_identifier visit_str "";
        deserialize_bytes visit_bytes b"";
        deserialize_byte_buf visit_bytes b"";
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_none()
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self.child()?)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(PlaceholderSeq {
            remaining: 0,
            child: self,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_seq(PlaceholderSeq {
            remaining: len,
            child: self.child()?,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(PlaceholderMap {
            fields: [].iter(),
            child: self,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_map(PlaceholderMap {
            fields: fields.iter(),
            child: self.child()?,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match variants.first() {
            Some(variant) => visitor.visit_enum(PlaceholderEnum {
                variant,
                child: self.child()?,
            }),
            None => Err(DeError::StandInFailed),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct PlaceholderSeq {
    remaining: usize,
    child: Placeholder,
}

impl<'de> SeqAccess<'de> for PlaceholderSeq {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        seed.deserialize(self.child).map(Some)
    }
}

struct PlaceholderMap {
    fields: std::slice::Iter<'static, &'static str>,
    child: Placeholder,
}

impl<'de> MapAccess<'de> for PlaceholderMap {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.fields.next() {
            Some(field) => seed
                .deserialize(IntoDeserializer::<DeError>::into_deserializer(*field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(self.child)
    }
}

struct PlaceholderEnum {
    variant: &'static str,
    child: Placeholder,
}

impl<'de> EnumAccess<'de> for PlaceholderEnum {
    type Error = DeError;
    type Variant = Placeholder;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Placeholder), DeError> {
        let value =
            seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(self.variant))?;
        Ok((value, self.child))
    }
}

impl<'de> VariantAccess<'de> for Placeholder {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;
    use serde::Deserialize;

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    fn problem(line: usize, column: usize, path: &str, message: &str) -> Problem {
        Problem {
            location: at(line, column),
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }

    fn scalar<'a>(root: &'a Node, key: &str) -> &'a NodeKind {
        &node_at(root, &[key]).unwrap().kind
    }

    // ---- test model of a pipeline ------------------------------------------------------

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pipeline {
        pipeline: String,
        source: Source,
        steps: Vec<Step>,
        on_error: Option<OnError>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Source {
        Csv {
            path: String,
            #[serde(default = "comma")]
            delimiter: String,
        },
        Sql {
            query: String,
        },
    }

    fn comma() -> String {
        ",".to_owned()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Step {
        Map(IndexMap<String, String>),
        Filter(String),
        Validate(IndexMap<String, Rule>),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Rule {
        #[serde(default)]
        required: bool,
        #[serde(default, deserialize_with = "optional_anchored")]
        pattern: Option<String>,
        max_len: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct OnError {
        reject_limit: String,
        then: String,
    }

    /// Stands for a `FromStr` validation done by the target type itself.
    fn check_anchored<E: de::Error>(pattern: String) -> Result<String, E> {
        if pattern.starts_with('^') {
            Ok(pattern)
        } else {
            Err(E::custom(format!(
                "pattern `{pattern}` must start with `^`"
            )))
        }
    }

    fn optional_anchored<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(check_anchored)
            .transpose()
    }

    fn anchored<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        check_anchored(String::deserialize(d)?)
    }

    fn load<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Problem>> {
        from_str(text)
    }

    // ---- parsing --------------------------------------------------------------------------

    #[test]
    fn implicit_typing_keeps_italian_data_as_written() {
        let root = parse(
            "provincia: NO\ncap: 00118\nistat: 058091\nattivo: true\nspento: false\nn: 42\n\
             neg: -7\nimporto: 1.50\nx: yes\nmaiuscolo: True\npiu: +5\nhex: 0x1F\n\
             quoted: \"42\"\nnulla: ~\nvuoto:\ninf: .inf\n",
        )
        .unwrap();
        let text = |key| match scalar(&root, key) {
            NodeKind::Str(s) => s.clone(),
            other => panic!("{key}: expected Str, got {other:?}"),
        };
        assert_eq!(text("provincia"), "NO");
        assert_eq!(text("cap"), "00118");
        assert_eq!(text("istat"), "058091");
        assert_eq!(text("importo"), "1.50");
        assert_eq!(text("x"), "yes");
        assert_eq!(text("maiuscolo"), "True");
        assert_eq!(text("piu"), "+5");
        assert_eq!(text("hex"), "0x1F");
        assert_eq!(text("quoted"), "42");
        assert_eq!(text("inf"), ".inf");
        assert!(matches!(scalar(&root, "attivo"), NodeKind::Bool(true)));
        assert!(matches!(scalar(&root, "spento"), NodeKind::Bool(false)));
        assert!(matches!(scalar(&root, "n"), NodeKind::Int(42)));
        assert!(matches!(scalar(&root, "neg"), NodeKind::Int(-7)));
        assert!(matches!(scalar(&root, "nulla"), NodeKind::Null));
        assert!(matches!(scalar(&root, "vuoto"), NodeKind::Null));
    }

    #[test]
    fn nodes_and_keys_carry_their_location() {
        let root = parse("a:\n  - x\n  - {b: 12}\n").unwrap();
        assert_eq!(root.location, at(1, 1));
        let NodeKind::Map(entries) = &root.kind else {
            panic!("root is not a map")
        };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.location, at(1, 1));
        assert_eq!(node_at(&root, &["a"]).unwrap().location, at(2, 3));
        assert_eq!(node_at(&root, &["a", "0"]).unwrap().location, at(2, 5));
        let b = node_at(&root, &["a", "1", "b"]).unwrap();
        assert_eq!(b.location, at(3, 9));
        assert!(matches!(b.kind, NodeKind::Int(12)));
        assert!(node_at(&root, &["a", "2"]).is_none());
        assert!(node_at(&root, &["nope"]).is_none());
    }

    #[test]
    fn duplicate_key_is_a_problem() {
        let err = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(
            err,
            problem(
                4,
                3,
                "b",
                "duplicate key `c` (first defined at line 3, column 3)"
            )
        );
    }

    #[test]
    fn syntax_error_has_a_location() {
        let err = parse("pipeline: x\nsteps: [map, filter\n").unwrap_err();
        assert_eq!(err.location, at(2, 8));
        assert!(err.message.contains("unclosed"), "{err}");
        assert!(
            !err.message.contains("line"),
            "location not repeated: {err}"
        );
    }

    #[test]
    fn deep_nesting_fails_cleanly() {
        for text in [
            "[".repeat(10_000),
            "{a: ".repeat(10_000),
            "- ".repeat(10_000),
        ] {
            let err = parse(&text).unwrap_err();
            assert_ne!(err.location, Location::default(), "{err}");
        }
    }

    #[test]
    fn alias_bomb_fails_cleanly() {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            let list = [prev.as_str(); 9].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{list}]\n"));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("too large"), "{err}");
    }

    // ---- deserialization ------------------------------------------------------------------

    #[test]
    fn numbers_are_read_as_text_exactly_as_written() {
        #[derive(Deserialize)]
        struct Address {
            cap: String,
        }
        let a: Address = load("cap: 16121\n").unwrap();
        assert_eq!(a.cap, "16121");
        let a: Address = load("cap: 016121\n").unwrap();
        assert_eq!(a.cap, "016121");
        let a: Address = load("cap: true\n").unwrap();
        assert_eq!(a.cap, "true");
    }

    #[test]
    fn all_problems_are_collected_with_location_and_path() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Order {
            name: String,
            items: Vec<Item>,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Item {
            code: String,
            qty: u32,
        }
        let text = "\
name: test
nmae: typo
items:
  - code: A
    qty: 1
  - code: B
    qty: abc
    colour: red
";
        let problems = load::<Order>(text).unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(2, 1, "", "unknown key `nmae` (did you mean `name`?)"),
                problem(
                    7,
                    10,
                    "items[1].qty",
                    "expected an integer, found the text `abc`"
                ),
                problem(
                    8,
                    5,
                    "items[1]",
                    "unknown key `colour` (known keys: code, qty)"
                ),
            ]
        );
        assert_eq!(
            problems[1].to_string(),
            "7:10: items[1].qty: expected an integer, found the text `abc`"
        );
    }

    #[test]
    fn out_of_range_and_text_integers() {
        #[derive(Debug, Deserialize)]
        struct Limits {
            small: u8,
            count: u64,
        }
        let l: Limits = load("small: \"7\"\ncount: 0042\n").unwrap();
        assert_eq!((l.small, l.count), (7, 42));
        let problems = load::<Limits>("small: 300\ncount: -1\n").unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(
                    1,
                    8,
                    "small",
                    "expected an integer from 0 to 255, found the number `300`"
                ),
                problem(
                    2,
                    8,
                    "count",
                    "expected an integer from 0 to 18446744073709551615, found the number `-1`"
                ),
            ]
        );
    }

    const PIPELINE: &str = "\
# Anagrafica clienti verso il CRM
pipeline: clienti
source:
  csv:
    path: data/clienti.csv
    delimiter: \";\"
steps:
  - map:
      provincia: NO
      cap: 00118
      istat: 058091
      civico: 16121
  - filter: attivo == true
  - validate:
      cap:
        required: true
        pattern: \"^[0-9]{5}$\"
      provincia:
        max_len: 2
on_error:
  reject_limit: 5%
  then: abort
";

    #[test]
    fn realistic_pipeline_round_trip() {
        let p: Pipeline = load(PIPELINE).unwrap();
        let map: IndexMap<String, String> = [
            ("provincia", "NO"),
            ("cap", "00118"),
            ("istat", "058091"),
            ("civico", "16121"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let rules: IndexMap<String, Rule> = [
            (
                "cap".to_owned(),
                Rule {
                    required: true,
                    pattern: Some("^[0-9]{5}$".to_owned()),
                    max_len: None,
                },
            ),
            (
                "provincia".to_owned(),
                Rule {
                    required: false,
                    pattern: None,
                    max_len: Some(2),
                },
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            p,
            Pipeline {
                pipeline: "clienti".to_owned(),
                source: Source::Csv {
                    path: "data/clienti.csv".to_owned(),
                    delimiter: ";".to_owned(),
                },
                steps: vec![
                    Step::Map(map),
                    Step::Filter("attivo == true".to_owned()),
                    Step::Validate(rules),
                ],
                on_error: Some(OnError {
                    reject_limit: "5%".to_owned(),
                    then: "abort".to_owned(),
                }),
            }
        );
        // `IndexMap` keeps the file order.
        let Step::Map(map) = &p.steps[0] else {
            panic!("not a map step")
        };
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, ["provincia", "cap", "istat", "civico"]);
    }

    #[test]
    fn sub_trees_can_be_checked_on_their_own() {
        let root = parse(PIPELINE).unwrap();
        let step = node_at(&root, &["steps", "2"]).unwrap();
        let step: Step = from_node(step, &index_path("steps", 2)).unwrap();
        assert!(matches!(step, Step::Validate(_)));

        let text = "steps:\n  - filter: [1]\n  - validate:\n      cap: {patern: x}\n";
        let root = parse(text).unwrap();
        let first = node_at(&root, &["steps", "0"]).unwrap();
        let problems = from_node::<Step>(first, "steps[0]").unwrap_err();
        assert_eq!(
            problems,
            vec![problem(
                2,
                13,
                "steps[0].filter",
                "expected text, found a list"
            )]
        );
        let second = node_at(&root, &["steps", "1"]).unwrap();
        let problems = from_node::<Step>(second, "steps[1]").unwrap_err();
        assert_eq!(
            problems,
            vec![problem(
                4,
                13,
                "steps[1].validate.cap",
                "unknown key `patern` (did you mean `pattern`?)"
            )]
        );
    }

    #[test]
    fn unknown_enum_variant_is_reported_with_a_suggestion() {
        let text = "\
pipeline: x
source:
  sql:
    query: select 1
steps:
  - mapp:
      a: b
  - filter: [1]
  - filter
  - map: {a: b}
    filter: c
";
        let problems = load::<Pipeline>(text).unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(
                    6,
                    5,
                    "steps[0]",
                    "unknown `step` kind `mapp`; expected one of: map, filter, validate \
                     (did you mean `map`?)"
                ),
                problem(8, 13, "steps[1].filter", "expected text, found a list"),
                problem(
                    9,
                    5,
                    "steps[2]",
                    "`filter` needs settings: write `filter:` followed by them"
                ),
                problem(
                    10,
                    5,
                    "steps[3]",
                    "expected exactly one `step` kind as key (one of: map, filter, validate), \
                     found 2 keys: `map`, `filter`; are the settings indented under their kind?"
                ),
            ]
        );
    }

    #[test]
    fn missing_key_is_reported_at_the_mapping_and_later_problems_still_found() {
        let text = "\
pipeline: x
source:
  csv:
    delimiter: \";\"
steps:
  - filter: [1]
";
        let problems = load::<Pipeline>(text).unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(4, 5, "source.csv", "missing key `path`"),
                problem(6, 13, "steps[0].filter", "expected text, found a list"),
            ]
        );
        let problems = load::<Pipeline>("source: {sql: {query: q}}\nsteps: []\n").unwrap_err();
        assert_eq!(problems, vec![problem(1, 1, "", "missing key `pipeline`")]);
    }

    #[test]
    fn errors_of_the_target_type_are_located_and_do_not_hide_others() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Checks {
            checks: Vec<Check>,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Check {
            name: String,
            // `""` (the stand-in) is rejected too: the element is then left out.
            #[serde(deserialize_with = "anchored")]
            pattern: String,
        }
        let text = "\
checks:
  - name: a
    pattern: x
  - name: b
    pattern: ^ok
  - name: c
    pattern: y
    extra: 1
";
        let problems = load::<Checks>(text).unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(
                    3,
                    14,
                    "checks[0].pattern",
                    "pattern `x` must start with `^`"
                ),
                problem(
                    7,
                    14,
                    "checks[2].pattern",
                    "pattern `y` must start with `^`"
                ),
                problem(
                    8,
                    5,
                    "checks[2]",
                    "unknown key `extra` (known keys: name, pattern)"
                ),
            ]
        );

        // Same check through `Option` and an `IndexMap` of structs.
        let text =
            "steps:\n  - validate:\n      cap: {pattern: \"[0-9]\"}\n      iban: {pattern: z}\n";
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Steps {
            steps: Vec<Step>,
        }
        let problems = load::<Steps>(text).unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(
                    3,
                    22,
                    "steps[0].validate.cap.pattern",
                    "pattern `[0-9]` must start with `^`"
                ),
                problem(
                    4,
                    23,
                    "steps[0].validate.iban.pattern",
                    "pattern `z` must start with `^`"
                ),
            ]
        );
    }

    #[test]
    fn any_newtype_option_and_default_work() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Code(String);
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "kebab-case", default)]
        struct Settings {
            batch_size: u32,
            dry_run: bool,
            code: Option<Code>,
            extra: serde_json::Value,
        }
        impl Default for Settings {
            fn default() -> Self {
                Settings {
                    batch_size: 500,
                    dry_run: false,
                    code: None,
                    extra: serde_json::Value::Null,
                }
            }
        }
        let s: Settings =
            load("dry-run: true\ncode: 00042\nextra: {a: 1, b: [true, x, 1.50, ~]}\n").unwrap();
        assert_eq!(
            s,
            Settings {
                batch_size: 500,
                dry_run: true,
                code: Some(Code("00042".to_owned())),
                extra: serde_json::json!({"a": 1, "b": [true, "x", "1.50", null]}),
            }
        );
        let s: Settings = load("code: ~\n").unwrap();
        assert_eq!(s.code, None);
        let problems = load::<Settings>("dry-run: yes\n").unwrap_err();
        assert_eq!(
            problems,
            vec![problem(
                1,
                10,
                "dry-run",
                "expected `true` or `false`, found the text `yes`"
            )]
        );
    }

    #[test]
    fn wrong_shapes_are_explained() {
        let problems = load::<Pipeline>("- a\n- b\n").unwrap_err();
        assert_eq!(
            problems,
            vec![problem(1, 1, "", "expected a mapping, found a list")]
        );
        let problems = load::<Pipeline>("pipeline: {a: 1}\nsource: csv\nsteps: {}\n").unwrap_err();
        assert_eq!(
            problems,
            vec![
                problem(1, 11, "pipeline", "expected text, found a mapping"),
                problem(
                    2,
                    9,
                    "source",
                    "`csv` needs settings: write `csv:` followed by them"
                ),
                problem(3, 8, "steps", "expected a list, found a mapping"),
            ]
        );
    }

    #[test]
    fn paths_quote_awkward_keys() {
        assert_eq!(key_path("", "a"), "a");
        assert_eq!(key_path("a", "b"), "a.b");
        assert_eq!(key_path("a", "x.y"), "a.\"x.y\"");
        assert_eq!(key_path("a", "nome cliente"), "a.\"nome cliente\"");
        assert_eq!(index_path("steps", 3), "steps[3]");

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Columns {
            columns: IndexMap<String, u32>,
        }
        let problems = load::<Columns>("columns:\n  \"x.y\": no\n").unwrap_err();
        assert_eq!(
            problems,
            vec![problem(
                2,
                10,
                "columns.\"x.y\"",
                "expected an integer, found the text `no`"
            )]
        );
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(edit_distance("patern", "pattern"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(suggest("mapp", &["map", "filter"]), Some("map"));
        assert_eq!(suggest("flter", &["map", "filter"]), Some("filter"));
        assert_eq!(suggest("x", &["ab"]), None);
        assert_eq!(suggest("zzzzz", &["map", "filter"]), None);
        assert_eq!(type_label("OnError"), "on_error");
    }
}
