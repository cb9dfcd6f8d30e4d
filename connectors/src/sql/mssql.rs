//! SQL Server (tiberius): the connection, value conversion and a source that reads a query
//! page by page with keyset paging, like `SqlSource` does for SQLite and PostgreSQL.
//!
//! Every page is one statement:
//!
//! ```sql
//! SELECT TOP (@P1) * FROM (<query>
//! ) AS q WHERE q.[id] > @P2 ORDER BY q.[id]
//! ```
//!
//! (the first page without `WHERE`), so a crash resumes after the last key of the last
//! committed batch and no page holds more than `batch_size` rows. Before the first page a
//! `SELECT TOP (0)` reads the query's column types: key parameters are cast to the
//! column's type (`datetime`, `varchar`, …) so that the comparison is exact and an index
//! on the key can still be used.
//!
//! Money is never carried as a float: `decimal`/`numeric` become exact decimals, and
//! `money`/`smallmoney` (which the driver hands over as `f64`) are turned back into their
//! exact 4-decimal value, or refused when the amount is too large for that to be certain.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use snodo_core::component::{Source, SourceContext};
use snodo_core::config::connections::{MssqlConnection, MssqlEncrypt};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Checkpoint, Schema};
use snodo_core::value::{Text, Value};

use super::SqlSourceConfig;
use tiberius::numeric::Numeric;
use tiberius::{
    AuthMethod, Client, ColumnData, ColumnType, Config, EncryptionLevel, FromSql, Query,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The tiberius configuration of a connection, with the password resolved (and registered
/// for redaction). Only the driver sees the password.
pub fn tiberius_config(conn: &MssqlConnection) -> Result<Config> {
    build_config(conn, None)
}

/// `redirect` replaces host and port after an `Error::Routing` (and drops the instance:
/// the redirect names an exact port).
fn build_config(conn: &MssqlConnection, redirect: Option<(&str, u16)>) -> Result<Config> {
    let password = conn
        .password
        .resolve()
        .map_err(|e| Error::Other(format!("{}: `password`: {e}", conn.connecting())))?;
    let mut c = Config::new();
    match redirect {
        Some((host, port)) => {
            c.host(host);
            c.port(port);
        }
        None => {
            c.host(&conn.host);
            if let Some(p) = conn.port {
                c.port(p);
            }
            if let Some(i) = &conn.instance {
                c.instance_name(i);
            }
        }
    }
    c.database(&conn.database);
    c.application_name(&conn.application_name);
    c.authentication(AuthMethod::sql_server(&conn.user, password.expose()));
    c.encryption(match conn.encrypt {
        // `EncryptionLevel::Off` still encrypts the login, which needs a TLS handshake:
        // exactly what a TLS 1.0-only server cannot give rustls.
        MssqlEncrypt::Off => EncryptionLevel::NotSupported,
        MssqlEncrypt::On => EncryptionLevel::On,
        MssqlEncrypt::Required => EncryptionLevel::Required,
    });
    if conn.trust_server_certificate {
        c.trust_cert();
    }
    Ok(c)
}

/// A connected client.
pub type MssqlClient = Client<Compat<TcpStream>>;

const TCP_HINT: &str = "check `host` and `port` (or `instance`, which needs the SQL Server \
     Browser on UDP 1434), that SQL Server accepts TCP/IP connections (SQL Server \
     Configuration Manager) and that no firewall is in the way";

const TLS_HINT: &str = "if the server's certificate is self-signed, set \
     `trust_server_certificate: true`; servers that speak only TLS 1.0 (SQL Server 2008–2014 \
     without the TLS 1.2 updates) cannot be reached over rustls: use `encrypt: off` on a \
     trusted network, or an stunnel that speaks TLS 1.2; if the server refuses encryption, \
     `encrypt: required` cannot work";

/// What to try after a failed login, by the driver's error.
fn login_hint(e: &tiberius::error::Error) -> &'static str {
    use tiberius::error::Error as E;
    match e {
        E::Server(t) if t.code() == 18456 => {
            "check `user` and the value `password` refers to; the login must use SQL Server \
             authentication (mixed mode), not Windows authentication"
        }
        E::Server(t) if t.code() == 4060 => {
            "check `database`, and that the login is a user of that database"
        }
        E::Server(_) => "see the server's message above",
        E::Tls(_) | E::Io { .. } | E::Protocol(_) => TLS_HINT,
        _ => TLS_HINT,
    }
}

/// Connects and logs in, following one `Error::Routing` redirect (Azure gateways). Errors
/// name the address and database and say what to try; they never contain the password.
pub async fn connect(conn: &MssqlConnection) -> Result<MssqlClient> {
    let what = conn.connecting();
    let config = tiberius_config(conn)?;
    let secs = conn.connect_timeout_secs.max(1);
    match tokio::time::timeout(Duration::from_secs(secs), open(conn, config)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(message)) => Err(Error::db(what, message)),
        Err(_) => Err(Error::db(
            what,
            format!(
                "no answer within {secs} s (`connect_timeout_secs`); {TCP_HINT}; if the TCP \
                 connection opens but the login hangs, {TLS_HINT}"
            ),
        )),
    }
}

async fn open(conn: &MssqlConnection, config: Config) -> std::result::Result<MssqlClient, String> {
    let tcp = if conn.instance.is_some() {
        use tiberius::SqlBrowser;
        TcpStream::connect_named(&config)
            .await
            .map_err(|e| format!("{e}; {TCP_HINT}"))?
    } else {
        TcpStream::connect(config.get_addr())
            .await
            .map_err(|e| format!("{e}; {TCP_HINT}"))?
    };
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match Client::connect(config, tcp.compat_write()).await {
        Ok(client) => Ok(client),
        Err(tiberius::error::Error::Routing { host, port }) => {
            let config = build_config(conn, Some((&host, port))).map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(config.get_addr())
                .await
                .map_err(|e| format!("redirected to {host}:{port}: {e}; {TCP_HINT}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            // One redirect at most, as the tiberius documentation does.
            Client::connect(config, tcp.compat_write())
                .await
                .map_err(|e| format!("redirected to {host}:{port}: {e}; {}", login_hint(&e)))
        }
        Err(e) => Err(format!("{e}; {}", login_hint(&e))),
    }
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

/// A float becomes a decimal through its shortest text form, which is what the legacy
/// application displayed (an `f32` through its own shortest form: `0.1`, not
/// `0.100000001490116`). Values a decimal cannot hold (NaN, 1e30) stay visible as text.
fn float_to_decimal(text: String) -> Value {
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map(Value::Decimal)
        .unwrap_or(Value::Str(text.into()))
}

/// `value × 10^-scale` written out exactly.
fn numeric_text(value: i128, scale: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    let s = scale as usize;
    if s == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= s {
        format!("{}{digits}", "0".repeat(s + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{sign}{int}.{frac}")
}

/// A `decimal`/`numeric` exactly: a decimal when it fits rust_decimal (28 digits of scale,
/// 96 bits), otherwise its exact digits as text (a later `type: decimal` then rejects the
/// record visibly instead of rounding it).
fn numeric_to_value(n: Numeric) -> Value {
    let (mut value, mut scale) = (n.value(), n.scale() as u32);
    // `decimal(38, 30)` holding 0.5: trailing zeros beyond rust_decimal's scale can go.
    while scale > 28 && value % 10 == 0 {
        value /= 10;
        scale -= 1;
    }
    match Decimal::try_from_i128_with_scale(value, scale) {
        Ok(d) => Value::Decimal(d),
        Err(_) => Value::Str(numeric_text(n.value(), n.scale() as u32).into()),
    }
}

/// Largest `money` amount whose exact value survives the driver's `f64`: the driver divides
/// the exact integer (units of 1/10000) by 10^4, and multiplying back and rounding returns
/// that integer while it is below 2^51.
const MONEY_EXACT_LIMIT: f64 = (1u64 << 51) as f64 / 1e4;

/// A `money`/`smallmoney` value (delivered by tiberius as `f64`) as its exact 4-decimal
/// amount.
fn money_to_value(f: f64) -> std::result::Result<Value, String> {
    if !f.is_finite() || f.abs() >= MONEY_EXACT_LIMIT {
        return Err(format!(
            "money amount {f} is beyond {MONEY_EXACT_LIMIT} and cannot be read exactly \
             through the driver; CAST the column AS decimal(19, 4) in the query"
        ));
    }
    Ok(Value::Decimal(Decimal::new((f * 1e4).round() as i64, 4)))
}

/// Rounds a legacy `datetime` (1/300 s ticks: .000, .003, .007) to the millisecond, as
/// SQL Server itself displays it; the largest tick of a day (.99667) rounds to .997, so
/// the date never changes.
fn round_to_millis(dt: NaiveDateTime) -> NaiveDateTime {
    let nanos = dt.nanosecond() as u64;
    let millis = ((nanos + 500_000) / 1_000_000).min(999) as u32;
    dt.with_nanosecond(millis * 1_000_000).unwrap_or(dt)
}

/// Converts one value read from SQL Server. Every `ColumnData` variant is handled; SQL
/// NULL of any type becomes [`Value::Null`]:
///
/// | SQL Server | snodo |
/// |---|---|
/// | `tinyint`, `smallint`, `int`, `bigint` | int |
/// | `real`, `float` | decimal (shortest text form; `money` columns: see [`cell_to_value`]) |
/// | `bit` | bool |
/// | `char`, `varchar`, `nchar`, `nvarchar`, `text`, `ntext` | string |
/// | `uniqueidentifier` | string, upper case as SQL Server prints it |
/// | `binary`, `varbinary`, `image` | bytes |
/// | `decimal`, `numeric` | decimal, exact (text when beyond rust_decimal) |
/// | `xml` | string |
/// | `datetime` | datetime, rounded to the millisecond as SQL Server shows it |
/// | `smalldatetime`, `datetime2` | datetime |
/// | `date` | date |
/// | `time` | string `HH:MM:SS[.fffffffff]` (snodo has no time-of-day type) |
/// | `datetimeoffset` | datetime in UTC |
///
/// Errors only for values the server should never send (a day count out of range).
pub fn column_to_value(data: ColumnData<'static>) -> std::result::Result<Value, String> {
    fn int(v: Option<impl Into<i64>>) -> Value {
        v.map_or(Value::Null, |v| Value::Int(v.into()))
    }
    let conv = |e: tiberius::error::Error| e.to_string();
    Ok(match data {
        ColumnData::U8(v) => int(v),
        ColumnData::I16(v) => int(v),
        ColumnData::I32(v) => int(v),
        ColumnData::I64(v) => int(v),
        ColumnData::F32(v) => v.map_or(Value::Null, |f| float_to_decimal(f.to_string())),
        ColumnData::F64(v) => v.map_or(Value::Null, |f| float_to_decimal(f.to_string())),
        ColumnData::Bit(v) => v.map_or(Value::Null, Value::Bool),
        ColumnData::String(v) => v.map_or(Value::Null, |s| Value::Str(Text::from(s))),
        ColumnData::Guid(v) => v.map_or(Value::Null, |g| {
            Value::Str(g.hyphenated().to_string().to_uppercase().into())
        }),
        ColumnData::Binary(v) => v.map_or(Value::Null, |b| Value::Bytes(b.into_owned())),
        ColumnData::Numeric(v) => v.map_or(Value::Null, numeric_to_value),
        ColumnData::Xml(v) => v.map_or(Value::Null, |x| {
            Value::Str(x.into_owned().into_string().into())
        }),
        ColumnData::DateTime(_) => NaiveDateTime::from_sql(&data)
            .map_err(conv)?
            .map_or(Value::Null, |d| Value::DateTime(round_to_millis(d))),
        ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => NaiveDateTime::from_sql(&data)
            .map_err(conv)?
            .map_or(Value::Null, Value::DateTime),
        ColumnData::Date(_) => NaiveDate::from_sql(&data)
            .map_err(conv)?
            .map_or(Value::Null, Value::Date),
        ColumnData::Time(_) => NaiveTime::from_sql(&data)
            .map_err(conv)?
            .map_or(Value::Null, |t| {
                Value::Str(t.format("%H:%M:%S%.f").to_string().into())
            }),
        // The wire value is UTC plus the offset. tiberius 0.13's `DateTime<Utc>` conversion
        // subtracts the offset once more (wrong by the offset); `DateTime<FixedOffset>` reads
        // the wire value as UTC, as SQL Server means it.
        ColumnData::DateTimeOffset(_) => chrono::DateTime::<chrono::FixedOffset>::from_sql(&data)
            .map_err(conv)?
            .map_or(Value::Null, |d| Value::DateTime(d.naive_utc())),
    })
}

/// Converts a value knowing its column's type: `money` and `smallmoney` arrive as `f64`
/// and are turned back into their exact 4-decimal amount; everything else goes through
/// [`column_to_value`].
pub fn cell_to_value(
    column_type: ColumnType,
    data: ColumnData<'static>,
) -> std::result::Result<Value, String> {
    match (column_type, &data) {
        (ColumnType::Money | ColumnType::Money4, ColumnData::F64(Some(f))) => money_to_value(*f),
        _ => column_to_value(data),
    }
}

/// A key value as a query parameter, with its native SQL Server type.
fn value_param(v: &Value) -> ColumnData<'static> {
    use tiberius::IntoSql;
    match v {
        Value::Null => ColumnData::String(None),
        Value::Bool(b) => ColumnData::Bit(Some(*b)),
        Value::Int(i) => ColumnData::I64(Some(*i)),
        Value::Decimal(d) => {
            ColumnData::Numeric(Some(Numeric::new_with_scale(d.mantissa(), d.scale() as u8)))
        }
        Value::Str(s) => ColumnData::String(Some(Cow::Owned(s.to_string()))),
        Value::Date(d) => d.into_sql(),
        Value::DateTime(d) => d.into_sql(),
        Value::Bytes(b) => ColumnData::Binary(Some(Cow::Owned(b.clone()))),
        other => ColumnData::String(Some(Cow::Owned(other.to_json().to_string()))),
    }
}

/// The type a key parameter is cast to before it is compared with its column. Without it,
/// a `datetime` column is compared as `datetime2` (its 1/300 s ticks never equal the
/// parameter, so rows sharing a timestamp across a page boundary would be skipped), and a
/// `varchar` column against an `nvarchar` parameter cannot use its index (every page would
/// scan the table).
fn param_cast(t: ColumnType) -> Option<&'static str> {
    match t {
        ColumnType::Datetime | ColumnType::Datetimen | ColumnType::Datetime4 => Some("datetime"),
        ColumnType::BigVarChar | ColumnType::BigChar => Some("varchar(8000)"),
        ColumnType::Guid => Some("uniqueidentifier"),
        ColumnType::Money | ColumnType::Money4 => Some("money"),
        ColumnType::Timen => Some("time"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------------

/// Quotes a T-SQL identifier: `[name]`, with `]` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `SELECT TOP (@P1) * FROM (query) AS q [WHERE …] ORDER BY …`: `@P1` is the page size,
/// `@P2…` the last key of the previous page. T-SQL has no row-value comparison, so a
/// composite key `(a, b) > (x, y)` is written out, with a leading `a >= x` that lets the
/// optimiser seek on an index. `casts[i]` is the type the parameter of `order[i]` is cast to.
fn page_sql(query: &str, order: &[String], casts: &[Option<&str>], after: bool) -> String {
    let cols: Vec<String> = order
        .iter()
        .map(|c| format!("q.{}", quote_ident(c)))
        .collect();
    // The newline keeps a trailing `-- comment` in the user's query from swallowing the
    // closing parenthesis.
    let mut sql = format!("SELECT TOP (@P1) * FROM ({query}\n) AS q");
    if after {
        let params: Vec<String> = (0..cols.len())
            .map(|i| match casts.get(i).copied().flatten() {
                Some(t) => format!("CAST(@P{} AS {t})", i + 2),
                None => format!("@P{}", i + 2),
            })
            .collect();
        if cols.len() == 1 {
            sql.push_str(&format!(" WHERE {} > {}", cols[0], params[0]));
        } else {
            let terms: Vec<String> = (0..cols.len())
                .map(|i| {
                    let mut parts: Vec<String> = (0..i)
                        .map(|j| format!("{} = {}", cols[j], params[j]))
                        .collect();
                    parts.push(format!("{} > {}", cols[i], params[i]));
                    if parts.len() == 1 {
                        parts.remove(0)
                    } else {
                        format!("({})", parts.join(" AND "))
                    }
                })
                .collect();
            sql.push_str(&format!(
                " WHERE {} >= {} AND ({})",
                cols[0],
                params[0],
                terms.join(" OR ")
            ));
        }
    }
    sql.push_str(&format!(" ORDER BY {}", cols.join(", ")));
    sql
}

/// Reads a SQL Server query page by page with keyset paging.
pub struct MssqlSource {
    client: MssqlClient,
    query: String,
    order: Vec<String>,
    key: Vec<String>,
    incremental: bool,
    describe: String,
}

impl MssqlSource {
    /// Builds the source. `query` is the user's query, already read from `query_file`;
    /// `client` comes from [`connect`].
    pub fn new(
        cfg: &SqlSourceConfig,
        client: MssqlClient,
        query: String,
        connection: &str,
    ) -> Self {
        let mut order = Vec::new();
        if let Some(c) = &cfg.cursor {
            order.push(c.clone());
        }
        for k in &cfg.key {
            if !order.contains(k) {
                order.push(k.clone());
            }
        }
        MssqlSource {
            describe: format!("sql {connection} (mssql)"),
            client,
            query: query.trim().trim_end_matches(';').to_string(),
            order,
            key: cfg.key.clone(),
            incremental: cfg.cursor.is_some(),
        }
    }

    /// Column names and types of the query, from `SELECT TOP (0)`.
    async fn probe(&mut self) -> Result<Vec<(String, ColumnType)>> {
        let sql = format!("SELECT TOP (0) * FROM ({}\n) AS q", self.query);
        let ctx_msg = "reading the columns of the source query";
        let mut stream = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| Error::db(ctx_msg, e))?;
        let cols: Vec<(String, ColumnType)> = stream
            .columns()
            .await
            .map_err(|e| Error::db(ctx_msg, e))?
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.name().to_string(), c.column_type()))
                    .collect()
            })
            .unwrap_or_default();
        stream
            .into_results()
            .await
            .map_err(|e| Error::db(ctx_msg, e))?;
        Ok(cols)
    }

    async fn read_all(
        mut self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let mut after: Option<Vec<Value>> = match from.as_ref().and_then(|c| c.get("after")) {
            None => None,
            Some(a) => Some(
                a.as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(Value::from_tagged_json)
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|v| v.len() == self.order.len())
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "the checkpoint to resume from is not a position of this query \
                             (`after`: {a}); reset the pipeline's checkpoint to start over"
                        ))
                    })?,
            ),
        };
        let mut record_no = from
            .as_ref()
            .and_then(|c| c.get("record"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);

        let columns = self.probe().await?;
        let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
        let find = |c: &String| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                Error::Input(format!(
                    "the query returns no column `{c}` (needed by `key`/`cursor`); columns: {}",
                    names.join(", ")
                ))
            })
        };
        let order_idx: Vec<usize> = self.order.iter().map(find).collect::<Result<_>>()?;
        let key_idx: Vec<usize> = self.key.iter().map(find).collect::<Result<_>>()?;
        let casts: Vec<Option<&str>> = order_idx
            .iter()
            .map(|&i| param_cast(columns[i].1))
            .collect();
        let schema: Arc<Schema> = Schema::new(names.clone());

        let mut total = 0u64;
        let mut seq = 0;
        loop {
            let mut limit = ctx.batch_size.max(1);
            if let Some(l) = ctx.limit {
                if total >= l {
                    return Ok(());
                }
                limit = limit.min((l - total) as usize);
            }
            let sql = page_sql(&self.query, &self.order, &casts, after.is_some());
            let ctx_msg = "reading a page of the source query";
            let mut q = Query::new(sql);
            q.bind(limit as i64);
            for v in after.iter().flatten() {
                q.bind(value_param(v));
            }
            let rows = q
                .query(&mut self.client)
                .await
                .map_err(|e| Error::db(ctx_msg, e))?
                .into_first_result()
                .await
                .map_err(|e| Error::db(ctx_msg, e))?;
            if rows.is_empty() {
                return Ok(());
            }
            let n = rows.len();
            seq += 1;
            let mut batch = Batch {
                seq,
                ..Default::default()
            };
            for row in rows {
                record_no += 1;
                let types: Vec<ColumnType> =
                    row.columns().iter().map(|c| c.column_type()).collect();
                let vals: Vec<Value> = row
                    .into_iter()
                    .zip(types)
                    .enumerate()
                    .map(|(i, (data, t))| {
                        cell_to_value(t, data).map_err(|e| {
                            Error::Input(format!(
                                "column `{}` of record {record_no}: {e}",
                                names.get(i).map(String::as_str).unwrap_or("?")
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                if vals.len() != names.len() {
                    return Err(Error::Input(format!(
                        "the source query returned {} columns, then {} (record {record_no})",
                        names.len(),
                        vals.len()
                    )));
                }
                let keyset = super::Keyset {
                    key: &self.key,
                    key_idx: &key_idx,
                    order: &self.order,
                    order_idx: &order_idx,
                };
                keyset.push(&mut batch, &schema, vals, record_no, &mut after)?;
            }
            batch.read = n as u64;
            total += n as u64;
            batch.checkpoint = super::page_checkpoint(&after, record_no);
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
            if n < limit {
                return Ok(());
            }
        }
    }
}

impl Source for MssqlSource {
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.query.as_bytes());
        h.update(self.order.join(",").as_bytes());
        format!("mssql|{}", hex::encode(h.finalize()))
    }

    fn incremental(&self) -> bool {
        self.incremental
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn run(
        self: Box<Self>,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(self.read_all(from, ctx, tx))
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};
    use tiberius::xml::XmlData;

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::from_str(s).unwrap())
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn conn(password_env: &str) -> MssqlConnection {
        MssqlConnection {
            host: "127.0.0.1".into(),
            port: Some(1),
            database: "SIUSS".into(),
            user: "snodo_reader".into(),
            password: snodo_core::secret::SecretRef(format!("${{env:{password_env}}}")),
            instance: None,
            encrypt: MssqlEncrypt::On,
            trust_server_certificate: false,
            application_name: "snodo".into(),
            connect_timeout_secs: 5,
        }
    }

    #[test]
    fn first_page_has_no_where() {
        let sql = page_sql(
            "SELECT * FROM dbo.ANAGRAFICA",
            &["ID".into()],
            &[None],
            false,
        );
        assert_eq!(
            sql,
            "SELECT TOP (@P1) * FROM (SELECT * FROM dbo.ANAGRAFICA\n) AS q ORDER BY q.[ID]"
        );
    }

    #[test]
    fn next_pages_start_after_the_key() {
        let sql = page_sql("SELECT id FROM t -- comment", &["id".into()], &[None], true);
        assert_eq!(
            sql,
            "SELECT TOP (@P1) * FROM (SELECT id FROM t -- comment\n) AS q WHERE q.[id] > @P2 ORDER BY q.[id]"
        );
    }

    #[test]
    fn composite_keys_are_written_out_and_casts_applied() {
        let order = vec![
            "DATA_AGG".to_string(),
            "ente".to_string(),
            "id]x".to_string(),
        ];
        let sql = page_sql("SELECT 1", &order, &[Some("datetime"), None, None], true);
        assert_eq!(
            sql,
            "SELECT TOP (@P1) * FROM (SELECT 1\n) AS q \
             WHERE q.[DATA_AGG] >= CAST(@P2 AS datetime) AND (\
             q.[DATA_AGG] > CAST(@P2 AS datetime) \
             OR (q.[DATA_AGG] = CAST(@P2 AS datetime) AND q.[ente] > @P3) \
             OR (q.[DATA_AGG] = CAST(@P2 AS datetime) AND q.[ente] = @P3 AND q.[id]]x] > @P4)) \
             ORDER BY q.[DATA_AGG], q.[ente], q.[id]]x]"
        );
        let two = page_sql("SELECT 1", &["a".into(), "b".into()], &[None, None], true);
        assert_eq!(
            two,
            "SELECT TOP (@P1) * FROM (SELECT 1\n) AS q WHERE q.[a] >= @P2 AND \
             (q.[a] > @P2 OR (q.[a] = @P2 AND q.[b] > @P3)) ORDER BY q.[a], q.[b]"
        );
    }

    #[test]
    fn identifiers_are_bracket_quoted() {
        assert_eq!(quote_ident("ID"), "[ID]");
        assert_eq!(quote_ident("a]b"), "[a]]b]");
        assert_eq!(quote_ident("Data Nascita"), "[Data Nascita]");
    }

    #[test]
    fn param_casts_by_column_type() {
        assert_eq!(param_cast(ColumnType::Datetimen), Some("datetime"));
        assert_eq!(param_cast(ColumnType::Datetime), Some("datetime"));
        assert_eq!(param_cast(ColumnType::BigVarChar), Some("varchar(8000)"));
        assert_eq!(param_cast(ColumnType::Int4), None);
        assert_eq!(param_cast(ColumnType::NVarchar), None);
        assert_eq!(param_cast(ColumnType::Datetime2), None);
    }

    fn cv(d: ColumnData<'static>) -> Value {
        column_to_value(d).unwrap()
    }

    #[test]
    fn integers_bits_and_nulls() {
        assert_eq!(cv(ColumnData::U8(Some(255))), Value::Int(255));
        assert_eq!(cv(ColumnData::I16(Some(-32768))), Value::Int(-32768));
        assert_eq!(cv(ColumnData::I32(Some(42))), Value::Int(42));
        assert_eq!(cv(ColumnData::I64(Some(i64::MAX))), Value::Int(i64::MAX));
        assert_eq!(cv(ColumnData::Bit(Some(true))), Value::Bool(true));
        for null in [
            ColumnData::U8(None),
            ColumnData::I16(None),
            ColumnData::I32(None),
            ColumnData::I64(None),
            ColumnData::F32(None),
            ColumnData::F64(None),
            ColumnData::Bit(None),
            ColumnData::String(None),
            ColumnData::Guid(None),
            ColumnData::Binary(None),
            ColumnData::Numeric(None),
            ColumnData::Xml(None),
            ColumnData::DateTime(None),
            ColumnData::SmallDateTime(None),
            ColumnData::Time(None),
            ColumnData::Date(None),
            ColumnData::DateTime2(None),
            ColumnData::DateTimeOffset(None),
        ] {
            assert_eq!(cv(null.clone()), Value::Null, "{null:?}");
        }
        // A NULL money cell is NULL too, not an error.
        assert_eq!(
            cell_to_value(ColumnType::Money, ColumnData::F64(None)).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn floats_become_decimals_through_their_shortest_text() {
        assert_eq!(cv(ColumnData::F32(Some(0.1))), dec("0.1"));
        assert_eq!(cv(ColumnData::F64(Some(0.1))), dec("0.1"));
        assert_eq!(cv(ColumnData::F64(Some(-1234.5))), dec("-1234.5"));
        assert_eq!(cv(ColumnData::F64(Some(1e-7))), dec("0.0000001"));
        assert_eq!(
            cv(ColumnData::F32(Some(1e30))),
            Value::Str(1e30f32.to_string().into())
        );
    }

    #[test]
    fn text_guid_binary_xml() {
        assert_eq!(
            cv(ColumnData::String(Some(Cow::Borrowed("Società àèìòù")))),
            Value::Str("Società àèìòù".into())
        );
        let g = tiberius::Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        assert_eq!(
            cv(ColumnData::Guid(Some(g))),
            Value::Str("6F9619FF-8B86-D011-B42D-00C04FC964FF".into())
        );
        assert_eq!(
            cv(ColumnData::Binary(Some(Cow::Owned(vec![0, 1, 254])))),
            Value::Bytes(vec![0, 1, 254])
        );
        assert_eq!(
            cv(ColumnData::Xml(Some(Cow::Owned(XmlData::new(
                "<a b=\"1\"/>"
            ))))),
            Value::Str("<a b=\"1\"/>".into())
        );
    }

    #[test]
    fn numerics_are_exact() {
        // decimal(12, 3) 12345.670: the scale is kept.
        let n = Numeric::new_with_scale(12_345_670, 3);
        let v = cv(ColumnData::Numeric(Some(n)));
        assert_eq!(v, dec("12345.670"));
        assert_eq!(v.to_text().unwrap(), "12345.670");
        assert_eq!(
            cv(ColumnData::Numeric(Some(Numeric::new_with_scale(-5, 2))))
                .to_text()
                .unwrap(),
            "-0.05"
        );
        assert_eq!(
            cv(ColumnData::Numeric(Some(Numeric::new_with_scale(7, 0)))),
            dec("7")
        );
        // decimal(38, 30) holding 0.5: beyond rust_decimal's scale, trailing zeros dropped.
        let half = Numeric::new_with_scale(5 * 10i128.pow(29), 30);
        assert_eq!(cv(ColumnData::Numeric(Some(half))), dec("0.5"));
        // 38 digits do not fit 96 bits: exact text, not a rounded decimal.
        let big = Numeric::new_with_scale(12_345_678_901_234_567_890_123_456_789_012_345_678, 2);
        assert_eq!(
            cv(ColumnData::Numeric(Some(big))),
            Value::Str("123456789012345678901234567890123456.78".into())
        );
        assert_eq!(numeric_text(-1, 3), "-0.001");
        assert_eq!(numeric_text(10, 1), "1.0");
    }

    #[test]
    fn money_is_read_back_exactly_with_four_decimals() {
        // How tiberius decodes `money`: the exact integer of 1/10000 units divided by 1e4.
        let wire = |units: i64| units as f64 / 1e4;
        for (units, text) in [
            (12_345_600i64, "1234.5600"),
            (1, "0.0001"),
            (-99_999, "-9.9999"),
            (1_999_999_999_999, "199999999.9999"),
            (2_000_000_000_000_001, "200000000000.0001"),
        ] {
            let v = cell_to_value(ColumnType::Money, ColumnData::F64(Some(wire(units)))).unwrap();
            assert_eq!(v.to_text().unwrap(), text, "{units}");
        }
        // smallmoney arrives the same way (i32 / 1e4).
        let v = cell_to_value(ColumnType::Money4, ColumnData::F64(Some(214748.3647))).unwrap();
        assert_eq!(v, dec("214748.3647"));
        // Beyond what an f64 carries exactly: refused, with the fix.
        let e =
            cell_to_value(ColumnType::Money, ColumnData::F64(Some(wire(i64::MAX)))).unwrap_err();
        assert!(e.contains("decimal(19, 4)"), "{e}");
        // Exhaustive-ish check of the round trip below the limit.
        let limit = 1i64 << 51;
        for x in [limit - 1, limit - 12_345, -(limit - 1)] {
            assert_eq!(
                money_to_value(wire(x)).unwrap(),
                Value::Decimal(Decimal::new(x, 4)),
                "{x}"
            );
        }
        let mut u: i64 = 1;
        while u + 7 < limit {
            for x in [u, u + 7, -u - 3] {
                let v = money_to_value(wire(x)).unwrap();
                assert_eq!(v, Value::Decimal(Decimal::new(x, 4)), "{x}");
            }
            u = u * 3 + 1;
        }
    }

    #[test]
    fn legacy_datetime_is_rounded_like_sql_server_shows_it() {
        let days = (ymd(2024, 2, 29) - ymd(1900, 1, 1)).num_days() as i32;
        let secs = 10 * 3600 + 11 * 60 + 12;
        let at = |ticks: u32| {
            cv(ColumnData::DateTime(Some(DateTime::new(
                days,
                secs * 300 + ticks,
            ))))
        };
        let t =
            |ms: u32| Value::DateTime(ymd(2024, 2, 29).and_hms_milli_opt(10, 11, 12, ms).unwrap());
        assert_eq!(at(0), t(0));
        assert_eq!(at(1), t(3));
        assert_eq!(at(2), t(7));
        assert_eq!(at(299), t(997));
        // The last tick of a day stays on that day.
        let last = cv(ColumnData::DateTime(Some(DateTime::new(
            days,
            86_400 * 300 - 1,
        ))));
        assert_eq!(
            last,
            Value::DateTime(ymd(2024, 2, 29).and_hms_milli_opt(23, 59, 59, 997).unwrap())
        );
        // Before 1900 (negative days) works too.
        let old = cv(ColumnData::DateTime(Some(DateTime::new(-1, 0))));
        assert_eq!(
            old,
            Value::DateTime(ymd(1899, 12, 31).and_hms_opt(0, 0, 0).unwrap())
        );
    }

    #[test]
    fn smalldatetime_date_time_datetime2_datetimeoffset() {
        let days1900 = (ymd(2023, 12, 31) - ymd(1900, 1, 1)).num_days() as u16;
        assert_eq!(
            cv(ColumnData::SmallDateTime(Some(SmallDateTime::new(
                days1900,
                23 * 60 + 59
            )))),
            Value::DateTime(ymd(2023, 12, 31).and_hms_opt(23, 59, 0).unwrap())
        );
        let days1 = (ymd(2024, 3, 1) - ymd(1, 1, 1)).num_days() as u32;
        assert_eq!(
            cv(ColumnData::Date(Some(Date::new(days1)))),
            Value::Date(ymd(2024, 3, 1))
        );
        // time(7) 08:30:15.1234567 = increments of 100 ns.
        let time = Time::new((8 * 3600 + 30 * 60 + 15) * 10_000_000 + 1_234_567, 7);
        assert_eq!(
            cv(ColumnData::Time(Some(time))),
            Value::Str("08:30:15.123456700".into())
        );
        let midnight = Time::new(0, 7);
        assert_eq!(
            cv(ColumnData::Time(Some(midnight))),
            Value::Str("00:00:00".into())
        );
        let dt2 = DateTime2::new(Date::new(days1), time);
        assert_eq!(
            cv(ColumnData::DateTime2(Some(dt2))),
            Value::DateTime(
                ymd(2024, 3, 1)
                    .and_hms_nano_opt(8, 30, 15, 123_456_700)
                    .unwrap()
            )
        );
        // On the wire a datetimeoffset is its UTC time plus the offset: 08:30:15 UTC shown
        // at +02:00 (10:30:15+02:00) is 08:30:15 UTC, whatever the offset.
        for offset in [120, -300, 0] {
            let dto = DateTimeOffset::new(dt2, offset);
            assert_eq!(
                cv(ColumnData::DateTimeOffset(Some(dto))),
                Value::DateTime(
                    ymd(2024, 3, 1)
                        .and_hms_nano_opt(8, 30, 15, 123_456_700)
                        .unwrap()
                ),
                "{offset}"
            );
        }
    }

    #[test]
    fn key_params_keep_their_types() {
        assert_eq!(value_param(&Value::Int(5)), ColumnData::I64(Some(5)));
        assert!(matches!(
            value_param(&dec("12.50")),
            ColumnData::Numeric(Some(n)) if n.value() == 1250 && n.scale() == 2
        ));
        assert!(matches!(
            value_param(&Value::Date(ymd(2024, 1, 2))),
            ColumnData::Date(Some(_))
        ));
        let dt = ymd(2024, 1, 2).and_hms_milli_opt(3, 4, 5, 997).unwrap();
        // A datetime key read from a `datetime` column goes back as datetime2(7), and the
        // query casts it to `datetime`: .997 lands on the same 1/300 s tick.
        let back = value_param(&Value::DateTime(dt));
        assert_eq!(NaiveDateTime::from_sql(&back).unwrap(), Some(dt));
    }

    #[test]
    fn config_debug_and_describe_never_show_the_password() {
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("SNODO_TEST_MSSQL_PW_DEBUG", "Sup3r-Secret-pw") };
        let c = conn("SNODO_TEST_MSSQL_PW_DEBUG");
        let cfg = tiberius_config(&c).unwrap();
        for text in [format!("{c:?}"), c.describe(), format!("{cfg:?}")] {
            assert!(!text.contains("Sup3r-Secret-pw"), "{text}");
        }
        assert_eq!(c.describe(), "mssql snodo_reader@127.0.0.1:1/SIUSS");
        let named = MssqlConnection {
            instance: Some("SQLEXPRESS".into()),
            port: None,
            ..c
        };
        assert_eq!(named.address(), "127.0.0.1\\SQLEXPRESS");
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_keys() {
        let c: MssqlConnection = serde_json::from_value(serde_json::json!({
            "host": "sql01", "database": "SIUSS", "user": "u", "password": "${env:X}"
        }))
        .unwrap();
        assert_eq!(c.encrypt, MssqlEncrypt::On);
        assert!(!c.trust_server_certificate);
        assert_eq!(c.application_name, "snodo");
        assert_eq!(c.address(), "sql01:1433");
        let e: MssqlConnection = serde_json::from_value(serde_json::json!({
            "host": "h", "database": "d", "user": "u", "password": "${env:X}", "encrypt": "required"
        }))
        .unwrap();
        assert_eq!(e.encrypt, MssqlEncrypt::Required);
        assert!(
            serde_json::from_value::<MssqlConnection>(serde_json::json!({
                "host": "h", "database": "d", "user": "u", "password": "${env:X}", "pasword": 1
            }))
            .is_err()
        );
    }

    #[test]
    fn unset_password_variable_is_named_not_valued() {
        let e = tiberius_config(&conn("SNODO_TEST_MSSQL_PW_UNSET_XYZ"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SNODO_TEST_MSSQL_PW_UNSET_XYZ") && e.contains("127.0.0.1:1"),
            "{e}"
        );
    }

    #[test]
    fn login_hints_point_at_the_right_option() {
        use tiberius::error::Error as E;
        assert!(
            login_hint(&E::Tls("handshake failure".into())).contains("trust_server_certificate")
        );
        assert!(login_hint(&E::Tls("protocol version".into())).contains("encrypt: off"));
    }

    #[tokio::test]
    async fn connection_errors_name_the_server_and_never_the_password() {
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("SNODO_TEST_MSSQL_PW_CLOSED", "Zq9-very-secret-PW") };
        let e = connect(&conn("SNODO_TEST_MSSQL_PW_CLOSED"))
            .await
            .expect_err("nothing listens on port 1")
            .to_string();
        assert!(!e.contains("Zq9-very-secret-PW"), "{e}");
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(e.contains("`SIUSS`"), "{e}");
        assert!(e.contains("`port`"), "{e}");
    }

    // -----------------------------------------------------------------------------------
    // End to end, against a real SQL Server.
    //
    // Set `SNODO_TEST_MSSQL=host:port` (e.g. `localhost:1433`) and
    // `SNODO_TEST_MSSQL_PASSWORD`; optional: `SNODO_TEST_MSSQL_USER` (default `sa`),
    // `SNODO_TEST_MSSQL_DATABASE` (default `tempdb`), `SNODO_TEST_MSSQL_ENCRYPT`
    // (`off`/`on`/`required`, default `on`). The server certificate is trusted (test
    // containers use self-signed ones). For example:
    //
    //   docker run -d -e ACCEPT_EULA=Y -e MSSQL_SA_PASSWORD='Str0ng!Passw0rd' -p 1433:1433 \
    //       mcr.microsoft.com/mssql/server:2022-latest
    //   SNODO_TEST_MSSQL=localhost:1433 SNODO_TEST_MSSQL_PASSWORD='Str0ng!Passw0rd' \
    //       cargo test mssql_end_to_end -- --nocapture
    // -----------------------------------------------------------------------------------

    fn e2e_connection() -> Option<MssqlConnection> {
        let Ok(addr) = std::env::var("SNODO_TEST_MSSQL") else {
            return None;
        };
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                Some(p.parse().expect("SNODO_TEST_MSSQL=host:port")),
            ),
            None => (addr.clone(), None),
        };
        let encrypt = match std::env::var("SNODO_TEST_MSSQL_ENCRYPT").as_deref() {
            Ok("off") => MssqlEncrypt::Off,
            Ok("required") => MssqlEncrypt::Required,
            _ => MssqlEncrypt::On,
        };
        Some(MssqlConnection {
            host,
            port,
            database: std::env::var("SNODO_TEST_MSSQL_DATABASE")
                .unwrap_or_else(|_| "tempdb".into()),
            user: std::env::var("SNODO_TEST_MSSQL_USER").unwrap_or_else(|_| "sa".into()),
            password: snodo_core::secret::SecretRef("${env:SNODO_TEST_MSSQL_PASSWORD}".into()),
            instance: None,
            encrypt,
            trust_server_certificate: true,
            application_name: "snodo-test".into(),
            connect_timeout_secs: 30,
        })
    }

    async fn read(
        conn: &MssqlConnection,
        query: &str,
        key: &[&str],
        cursor: Option<&str>,
        from: Option<Checkpoint>,
        batch_size: usize,
        limit: Option<u64>,
    ) -> Vec<Batch> {
        let cfg = SqlSourceConfig {
            connection: "test".into(),
            query: Some(query.into()),
            query_file: None,
            key: key.iter().map(|k| k.to_string()).collect(),
            cursor: cursor.map(str::to_string),
        };
        let client = connect(conn).await.unwrap();
        let src: Box<dyn Source> = Box::new(MssqlSource::new(&cfg, client, query.into(), "test"));
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(src.run(
            from,
            SourceContext {
                batch_size,
                limit,
                personal: Arc::new(Vec::new()),
                extra_fields: 0,
            },
            tx,
        ));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.push(b);
        }
        task.await.unwrap().unwrap();
        out
    }

    fn ids(batches: &[Batch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| match r.get("id") {
                Some(Value::Int(i)) => *i,
                other => panic!("id {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn mssql_end_to_end() {
        let Some(conn) = e2e_connection() else {
            eprintln!(
                "skipped: set SNODO_TEST_MSSQL=host:port and SNODO_TEST_MSSQL_PASSWORD to run it"
            );
            return;
        };
        // A global temporary table: visible to the source's own connection, dropped with
        // the setup connection.
        let table = format!("##snodo_e2e_{}", std::process::id());
        let mut setup = connect(&conn).await.unwrap();
        setup
            .simple_query(format!(
                "CREATE TABLE {table} (
                    id int NOT NULL PRIMARY KEY, u8 tinyint, i16 smallint, i64 bigint,
                    f32 real, f64 float, b bit, s nvarchar(50), vs varchar(50), g uniqueidentifier,
                    bin varbinary(10), n decimal(12, 3), m money, sm smallmoney, x xml,
                    dt datetime, sdt smalldatetime, t time(7), d date, dt2 datetime2(7),
                    dto datetimeoffset(7))"
            ))
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        setup
            .simple_query(format!(
                "INSERT INTO {table} VALUES
                 (1, 255, -32768, 9223372036854775807, 0.1, 0.1, 1, N'Società àèìòù', 'Perù',
                  '6F9619FF-8B86-D011-B42D-00C04FC964FF', 0x0001FE, 12345.670, 1234.5600,
                  -9.9999, '<a b=\"1\"/>', '2024-02-29T10:11:12.997', '2023-12-31T23:59:00',
                  '08:30:15.1234567', '2024-03-01', '2024-03-01T08:30:15.1234567',
                  '2024-03-01T08:30:15.1234567+02:00'),
                 (2, 0, 0, 0, 0, 0, 0, N'', '', NULL, 0x, 0, 0, 0, NULL,
                  '2024-02-29T10:11:12.997', NULL, NULL, NULL, NULL, NULL),
                 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, '2024-02-29T10:11:12.997', NULL, NULL, NULL, NULL, NULL),
                 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, '2024-02-29T10:11:12.997', NULL, NULL, NULL, NULL, NULL),
                 (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, '2020-01-01T00:00:00', NULL, NULL, NULL, NULL, NULL)"
            ))
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        let query = format!("SELECT * FROM {table}");

        // Batches of 2, in key order.
        let all = read(&conn, &query, &["id"], None, None, 2, None).await;
        assert_eq!(
            all.iter().map(|b| b.records.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(ids(&all), [1, 2, 3, 4, 5]);
        let r1 = &all[0].records[0];
        let expect = [
            ("u8", Value::Int(255)),
            ("i16", Value::Int(-32768)),
            ("i64", Value::Int(i64::MAX)),
            ("f32", dec("0.1")),
            ("f64", dec("0.1")),
            ("b", Value::Bool(true)),
            ("s", Value::Str("Società àèìòù".into())),
            ("vs", Value::Str("Perù".into())),
            (
                "g",
                Value::Str("6F9619FF-8B86-D011-B42D-00C04FC964FF".into()),
            ),
            ("bin", Value::Bytes(vec![0, 1, 254])),
            ("n", dec("12345.670")),
            ("m", dec("1234.5600")),
            ("sm", dec("-9.9999")),
            (
                "dt",
                Value::DateTime(ymd(2024, 2, 29).and_hms_milli_opt(10, 11, 12, 997).unwrap()),
            ),
            (
                "sdt",
                Value::DateTime(ymd(2023, 12, 31).and_hms_opt(23, 59, 0).unwrap()),
            ),
            ("t", Value::Str("08:30:15.123456700".into())),
            ("d", Value::Date(ymd(2024, 3, 1))),
            (
                "dt2",
                Value::DateTime(
                    ymd(2024, 3, 1)
                        .and_hms_nano_opt(8, 30, 15, 123_456_700)
                        .unwrap(),
                ),
            ),
            (
                "dto",
                Value::DateTime(
                    ymd(2024, 3, 1)
                        .and_hms_nano_opt(6, 30, 15, 123_456_700)
                        .unwrap(),
                ),
            ),
        ];
        for (col, v) in &expect {
            assert_eq!(r1.get(col), Some(v), "column {col}");
        }
        assert_eq!(r1.get("m").unwrap().to_text().unwrap(), "1234.5600");
        // SQL Server re-serialises xml (`<a b="1" />`).
        let x = r1.get("x").and_then(Value::as_str).unwrap_or_default();
        assert!(x.starts_with("<a b=\"1\"") && x.ends_with("/>"), "{x}");
        assert_eq!(all[1].records[0].get("bin"), Some(&Value::Bytes(vec![])));
        assert_eq!(
            all[1].records[0].get("s"),
            Some(&Value::Str(Default::default()))
        );
        for (col, _) in expect.iter().filter(|(c, _)| *c != "dt") {
            assert_eq!(
                all[1].records[1].get(col),
                Some(&Value::Null),
                "row 3 column {col}"
            );
        }
        assert_eq!(r1.position.key.as_deref(), Some("id=1"));
        assert_eq!(all[2].records[0].position.record, 5);

        // Resume from the checkpoint of the first batch.
        let cp = all[0].checkpoint.clone();
        assert_eq!(
            cp,
            serde_json::json!({"after": [{"int": "2"}], "record": 2})
        );
        let rest = read(&conn, &query, &["id"], None, Some(cp), 2, None).await;
        assert_eq!(ids(&rest), [3, 4, 5]);
        assert_eq!(rest[0].records[0].position.record, 3);

        // --limit.
        let limited = read(&conn, &query, &["id"], None, None, 2, Some(3)).await;
        assert_eq!(ids(&limited), [1, 2, 3]);

        // A `datetime` cursor shared by rows 1-4 across page boundaries (the CAST case):
        // every row exactly once, and resuming in the middle of the shared timestamp.
        let by_cursor = read(&conn, &query, &["id"], Some("dt"), None, 3, None).await;
        assert_eq!(ids(&by_cursor), [5, 1, 2, 3, 4]);
        let mid = by_cursor[0].checkpoint.clone();
        let rest = read(&conn, &query, &["id"], Some("dt"), Some(mid), 1, None).await;
        assert_eq!(ids(&rest), [3, 4]);

        // A varchar composite key (the varchar CAST case).
        let q2 = format!("SELECT id, CAST(id % 2 AS varchar(5)) AS parity FROM {table}");
        let by_parity = read(&conn, &q2, &["parity", "id"], None, None, 2, None).await;
        assert_eq!(ids(&by_parity), [2, 4, 1, 3, 5]);

        // A missing key column is named.
        let cfg = SqlSourceConfig {
            connection: "test".into(),
            query: Some(query.clone()),
            query_file: None,
            key: vec!["nope".into()],
            cursor: None,
        };
        let src = Box::new(MssqlSource::new(
            &cfg,
            connect(&conn).await.unwrap(),
            query.clone(),
            "t",
        ));
        let (tx, _rx) = mpsc::channel(4);
        let e = src
            .run(
                None,
                SourceContext {
                    batch_size: 2,
                    limit: None,
                    personal: Arc::new(vec![]),
                    extra_fields: 0,
                },
                tx,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column `nope`"), "{e}");

        setup
            .simple_query(format!("DROP TABLE {table}"))
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
    }
}
