//! The cache on disk: one data file and one small text `.meta` file per entry, named by
//! [`Key::file_name`], plus `tmp/` for captures in progress. An entry exists once both files are
//! in place (data renamed first, meta last), so a crash never leaves a half entry that is
//! served; start-up removes strays and anything left in `tmp/`.
//!
//! Thread-safe: the relay's capture and serve threads and the control path share one `Store`.

use core::net::SocketAddr;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Index, Key, Meta};

const MAGIC: &str = "ftpgate-cache 1";

/// Last-use times are milliseconds since the epoch (kept as the meta file's mtime on disk).
fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub struct Store {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    index: Index,
    /// Keys (file names) being captured: one capture per key at a time.
    capturing: HashSet<String>,
    next_tmp: u64,
}

/// A capture in progress: the temporary file the relay writes. Dropped without
/// [`Store::commit`], it is deleted, so an aborted transfer never becomes an entry.
pub struct Capture {
    store: Arc<Store>,
    pub key: Key,
    pub file: File,
    tmp: PathBuf,
    done: bool,
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
        self.store.lock().capturing.remove(&self.key.file_name());
    }
}

/// One entry as `cache list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub meta: Meta,
    pub file: PathBuf,
}

impl Store {
    /// Opens (creating) the cache directory and loads its entries.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Arc<Store>> {
        fs::create_dir_all(dir.join("tmp"))?;
        for e in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        let mut index = Index::new(max_bytes);
        let mut evict = Vec::new();
        let mut entries = list(dir)?;
        // oldest first: each insert may evict only entries used before it
        entries.sort_by_key(|l| l.meta.last_used);
        for l in entries {
            evict.extend(index.insert(l.meta));
        }
        let store = Arc::new(Store { dir: dir.to_path_buf(), inner: Mutex::new(Inner { index, capturing: HashSet::new(), next_tmp: 0 }) });
        for name in evict {
            store.delete_files(&name);
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.data"))
    }
    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.meta"))
    }
    fn delete_files(&self, name: &str) {
        let _ = fs::remove_file(self.meta_path(name));
        let _ = fs::remove_file(self.data_path(name));
    }

    /// Whether any entry belongs to `user`'s space at `server` (anonymous logins share one).
    pub fn holds_any(&self, server: SocketAddr, user: &str) -> bool {
        let space = Key::space(user);
        self.lock().index.keys().any(|k| k.server == server && k.user == space)
    }

    pub fn lookup(&self, key: &Key) -> Option<Meta> {
        self.lock().index.get(key).cloned()
    }

    /// Opens an entry for serving (the open file stays readable even if the entry is evicted
    /// meanwhile) and marks it used. `None` if it is gone or unreadable (then it is forgotten).
    pub fn open_entry(&self, key: &Key) -> Option<(File, Meta)> {
        let mut inner = self.lock();
        let meta = inner.index.get(key)?.clone();
        let name = key.file_name();
        match File::open(self.data_path(&name)) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(meta.size) => {
                inner.index.touch(key, now_millis());
                let _ = File::options().write(true).open(self.meta_path(&name)).and_then(|m| m.set_modified(SystemTime::now()));
                Some((f, meta))
            }
            _ => {
                inner.index.remove(key);
                drop(inner);
                self.delete_files(&name);
                None
            }
        }
    }

    /// Starts capturing `key`. `None` if another capture of it is running or the temporary file
    /// cannot be created.
    pub fn begin(self: &Arc<Self>, key: &Key) -> io::Result<Option<Capture>> {
        let name = key.file_name();
        let n = {
            let mut inner = self.lock();
            if !inner.capturing.insert(name.clone()) {
                return Ok(None);
            }
            inner.next_tmp += 1;
            inner.next_tmp
        };
        let tmp = self.dir.join("tmp").join(format!("{name}.{}.{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => Ok(Some(Capture { store: self.clone(), key: key.clone(), file, tmp, done: false })),
            Err(e) => {
                self.lock().capturing.remove(&name);
                Err(e)
            }
        }
    }

    /// Makes a finished capture an entry. Returns the keys' file names evicted for room.
    pub fn commit(&self, mut cap: Capture, size: u64, mdtm: &str) -> io::Result<Vec<String>> {
        let name = cap.key.file_name();
        let meta = Meta { key: cap.key.clone(), size, mdtm: mdtm.to_string(), last_used: now_millis() };
        cap.file.sync_data()?;
        let meta_tmp = cap.tmp.with_extension("meta");
        let write_meta = || -> io::Result<()> {
            let mut f = File::create(&meta_tmp)?;
            f.write_all(render_meta(&meta).as_bytes())?;
            f.sync_data()
        };
        if let Err(e) = write_meta() {
            let _ = fs::remove_file(&meta_tmp);
            return Err(e);
        }
        let mut inner = self.lock();
        // the old entry (if any) goes first, so no reader pairs new meta with old data
        if inner.index.remove(&cap.key).is_some() {
            self.delete_files(&name);
        }
        fs::rename(&cap.tmp, self.data_path(&name))?;
        if let Err(e) = fs::rename(&meta_tmp, self.meta_path(&name)) {
            let _ = fs::remove_file(self.data_path(&name));
            return Err(e);
        }
        cap.done = true;
        let evicted = inner.index.insert(meta);
        crate::metrics::m().cache_evictions.inc_by(evicted.len() as u64);
        drop(inner);
        for v in &evicted {
            self.delete_files(v);
        }
        Ok(evicted)
    }

    pub fn remove(&self, key: &Key) {
        if self.lock().index.remove(key).is_some() {
            self.delete_files(&key.file_name());
        }
    }

    /// Forgets every login's copy of `path` on `server` (it is being changed).
    pub fn invalidate(&self, server: SocketAddr, path: &str) -> usize {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner.index.keys().filter(|k| k.server == server && k.path == path).cloned().collect();
        for k in &keys {
            inner.index.remove(k);
        }
        drop(inner);
        for k in &keys {
            self.delete_files(&k.file_name());
        }
        keys.len()
    }

    pub fn totals(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.index.len(), inner.index.total())
    }
}

fn render_meta(m: &Meta) -> String {
    format!(
        "{MAGIC}\nserver {}\nuser {}\nbinary {}\nsize {}\nmdtm {}\npath {}\n",
        m.key.server, m.key.user, m.key.binary as u8, m.size, m.mdtm, m.key.path
    )
}

/// Parses a `.meta` file; `None` if it is not one of ours or damaged.
fn parse_meta(text: &str, last_used: u64) -> Option<Meta> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let (mut server, mut user, mut binary, mut size, mut mdtm, mut path) = (None, None, None, None, None, None);
    for l in lines {
        let (k, v) = l.split_once(' ')?;
        match k {
            "server" => server = v.parse::<SocketAddr>().ok(),
            "user" => user = Some(v.to_string()),
            "binary" => binary = Some(v == "1"),
            "size" => size = v.parse::<u64>().ok(),
            "mdtm" => mdtm = Some(v.to_string()),
            "path" => path = Some(v.to_string()),
            _ => {}
        }
    }
    let key = Key::new(server?, &user?, path?, binary?);
    Some(Meta { key, size: size?, mdtm: mdtm?, last_used })
}

/// The entries in `dir` (for `ftpgate cache list` and start-up). Damaged entries and data
/// files without a meta file are deleted.
pub fn list(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut metas = HashSet::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) != Some("meta") {
            continue;
        }
        let data = p.with_extension("data");
        let used =
            fs::metadata(&p).and_then(|m| m.modified()).ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64);
        let meta = fs::read_to_string(&p).ok().and_then(|t| parse_meta(&t, used));
        match (meta, fs::metadata(&data)) {
            (Some(m), Ok(d)) if d.len() == m.size && p.file_stem().and_then(|s| s.to_str()) == Some(&m.key.file_name()) => {
                metas.insert(data.clone());
                out.push(Listed { meta: m, file: data });
            }
            _ => {
                let _ = fs::remove_file(&p);
                let _ = fs::remove_file(&data);
            }
        }
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) == Some("data") && !metas.contains(&p) {
            let _ = fs::remove_file(&p);
        }
    }
    out.sort_by(|a, b| {
        (&a.meta.key.server.to_string(), &a.meta.key.user, &a.meta.key.path).cmp(&(
            &b.meta.key.server.to_string(),
            &b.meta.key.user,
            &b.meta.key.path,
        ))
    });
    Ok(out)
}

/// Deletes every entry (`ftpgate cache clear`). Returns how many there were.
pub fn clear(dir: &Path) -> io::Result<usize> {
    let entries = list(dir)?;
    for l in &entries {
        fs::remove_file(&l.file)?;
        fs::remove_file(l.file.with_extension("meta"))?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ftpgate-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn key(user: &str, path: &str) -> Key {
        Key::new("10.0.2.2:21".parse().unwrap(), user, path.into(), true)
    }

    fn put(s: &Arc<Store>, k: &Key, data: &[u8]) {
        let mut c = s.begin(k).unwrap().unwrap();
        c.file.write_all(data).unwrap();
        s.commit(c, data.len() as u64, "20260101000000").unwrap();
    }

    #[test]
    fn capture_commit_serve_and_reload() {
        let d = tmpdir("a");
        let s = Store::open(&d, 1000).unwrap();
        let k = key("alice", "/pub/a b.bin");
        put(&s, &k, b"hello");
        let (mut f, m) = s.open_entry(&k).unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!((got.as_str(), m.size), ("hello", 5));
        drop(s);
        let s = Store::open(&d, 1000).unwrap();
        assert_eq!(s.lookup(&k).map(|m| m.mdtm), Some("20260101000000".into()));
        assert!(s.lookup(&key("bob", "/pub/a b.bin")).is_none());
        assert_eq!(list(&d).unwrap().len(), 1);
        assert_eq!(clear(&d).unwrap(), 1);
        assert!(list(&d).unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn aborted_capture_leaves_nothing_and_one_capture_per_key() {
        let d = tmpdir("b");
        let s = Store::open(&d, 1000).unwrap();
        let k = key("a", "/f");
        let c = s.begin(&k).unwrap().unwrap();
        assert!(s.begin(&k).unwrap().is_none(), "second capture of the same key");
        drop(c);
        assert!(s.lookup(&k).is_none());
        assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        assert!(s.begin(&k).unwrap().is_some());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn eviction_deletes_files_and_invalidate_drops_all_logins() {
        let d = tmpdir("c");
        let s = Store::open(&d, 10).unwrap();
        put(&s, &key("a", "/1"), b"123456");
        put(&s, &key("a", "/2"), b"123456");
        assert!(s.lookup(&key("a", "/1")).is_none());
        assert_eq!(list(&d).unwrap().len(), 1);
        put(&s, &key("b", "/2"), b"1234");
        assert_eq!(s.invalidate("10.0.2.2:21".parse().unwrap(), "/2"), 2);
        assert!(list(&d).unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damaged_meta_is_dropped_at_load() {
        let d = tmpdir("d");
        let s = Store::open(&d, 1000).unwrap();
        put(&s, &key("a", "/1"), b"xy");
        drop(s);
        let name = key("a", "/1").file_name();
        fs::write(d.join(format!("{name}.meta")), "junk").unwrap();
        let s = Store::open(&d, 1000).unwrap();
        assert_eq!(s.totals(), (0, 0));
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "only tmp/ is left");
        fs::remove_dir_all(&d).unwrap();
    }
}
