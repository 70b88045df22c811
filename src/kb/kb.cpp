// SQLite implementation of the knowledge base (kb.h): schema and migrations check, dedupe, best-per-key, JSON
// export/import. Every write is its own transaction; WAL keeps readers (the runtime) off the writer's back.
#include "kb/kb.h"
#include "kernels/kq_gemv/genome.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>

#include "common/error.h"
#include "common/util.h"
#include "cpu/info.h"

namespace genesis::kb {

namespace {

std::string now_text() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A prepared statement; binds by 1-based index, throws genesis::Error with the database's message.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::string& file) : db_(db), file_(file) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      fail("knowledge base {}: {} (in: {})", file, sqlite3_errmsg(db), sql);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, int v) { return bind(i, int64_t(v)); }
  Stmt& bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  // true while a row is available
  bool step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("knowledge base {}: {}", file_, sqlite3_errmsg(db_));
  }
  std::string text(int c) const {
    auto p = sqlite3_column_text(s_, c);
    return p ? std::string(reinterpret_cast<const char*>(p), size_t(sqlite3_column_bytes(s_, c))) : std::string();
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }

 private:
  sqlite3* db_;
  std::string file_;
  sqlite3_stmt* s_ = nullptr;
};

// RAII transaction: rolls back unless commit() was called.
class Txn {
 public:
  Txn(sqlite3* db, const std::string& file) : db_(db), file_(file) { run("BEGIN IMMEDIATE"); }
  ~Txn() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    run("COMMIT");
    done_ = true;
  }

 private:
  void run(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string m = err ? err : "?";
      sqlite3_free(err);
      fail("knowledge base {}: {} failed: {}", file_, sql, m);
    }
  }
  sqlite3* db_;
  std::string file_;
  bool done_ = false;
};

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
  id INTEGER PRIMARY KEY, family TEXT NOT NULL, strategy TEXT NOT NULL, seed INTEGER NOT NULL,
  cpu_sig TEXT NOT NULL, build_id TEXT NOT NULL, status TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
  config TEXT NOT NULL, report TEXT);
CREATE TABLE IF NOT EXISTS candidates(
  id INTEGER PRIMARY KEY, run_id INTEGER, eval_index INTEGER NOT NULL,
  family TEXT NOT NULL, path TEXT NOT NULL, shape TEXT NOT NULL, tokens INTEGER NOT NULL, regime TEXT NOT NULL,
  genome TEXT NOT NULL, genome_hash TEXT NOT NULL, cpu_sig TEXT NOT NULL, build_id TEXT NOT NULL,
  verdict TEXT NOT NULL, diagnostics TEXT NOT NULL, fitness REAL NOT NULL, result TEXT NOT NULL,
  foreign_ INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
  UNIQUE(genome_hash, family, path, shape, tokens, regime, cpu_sig, build_id));
CREATE INDEX IF NOT EXISTS candidates_run ON candidates(run_id, eval_index);
CREATE TABLE IF NOT EXISTS best(
  family TEXT NOT NULL, path TEXT NOT NULL, shape TEXT NOT NULL, tokens INTEGER NOT NULL,
  cpu_sig TEXT NOT NULL, build_id TEXT NOT NULL, genome TEXT NOT NULL, genome_hash TEXT NOT NULL,
  speedup REAL NOT NULL, baseline_us REAL NOT NULL, best_us REAL NOT NULL, run_id INTEGER,
  foreign_ INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL,
  PRIMARY KEY(family, path, shape, tokens, cpu_sig, build_id));
)sql";

constexpr const char* kCandidateCols =
    "id, run_id, eval_index, family, path, shape, tokens, regime, genome, genome_hash, cpu_sig, build_id, verdict, "
    "diagnostics, fitness, result, foreign_";

Candidate read_candidate(const Stmt& s) {
  Candidate c;
  c.id = s.i64(0);
  c.run_id = s.i64(1);
  c.eval_index = s.i64(2);
  c.family = s.text(3);
  c.path = s.text(4);
  c.shape = s.text(5);
  c.tokens = int(s.i64(6));
  c.regime = s.text(7);
  c.genome = s.text(8);
  c.genome_hash = s.text(9);
  c.cpu_sig = s.text(10);
  c.build_id = s.text(11);
  c.verdict = s.text(12);
  c.diagnostics = s.text(13);
  c.fitness = s.f64(14);
  c.result = nlohmann::json::parse(s.text(15), nullptr, false);
  c.foreign = s.i64(16) != 0;
  return c;
}

constexpr const char* kBestCols =
    "family, path, shape, tokens, cpu_sig, build_id, genome, genome_hash, speedup, baseline_us, best_us, run_id, "
    "foreign_, updated";

Best read_best(const Stmt& s) {
  Best b;
  b.family = s.text(0);
  b.path = s.text(1);
  b.shape = s.text(2);
  b.tokens = int(s.i64(3));
  b.cpu_sig = s.text(4);
  b.build_id = s.text(5);
  b.genome = s.text(6);
  b.genome_hash = s.text(7);
  b.speedup = s.f64(8);
  b.baseline_us = s.f64(9);
  b.best_us = s.f64(10);
  b.run_id = s.i64(11);
  b.foreign = s.i64(12) != 0;
  b.updated = s.text(13);
  return b;
}

Run read_run(const Stmt& s) {
  Run r;
  r.id = s.i64(0);
  r.family = s.text(1);
  r.strategy = s.text(2);
  r.seed = uint64_t(s.i64(3));
  r.cpu_sig = s.text(4);
  r.build_id = s.text(5);
  r.status = s.text(6);
  r.started = s.text(7);
  r.finished = s.text(8);
  r.config = nlohmann::json::parse(s.text(9), nullptr, false);
  auto rep = s.text(10);
  r.report = rep.empty() ? nlohmann::json() : nlohmann::json::parse(rep, nullptr, false);
  return r;
}

constexpr const char* kRunCols = "id, family, strategy, seed, cpu_sig, build_id, status, started, finished, config, report";

const std::vector<std::string> kVerdicts = {"ok", "wrong_result", "crash", "timeout", "illegal", "invalid"};

}  // namespace

std::string default_path() { return (std::filesystem::path(cache_dir()) / "kb.sqlite").string(); }

std::string host_cpu_signature() { return cpu::cpu_info().signature; }

Kb::Kb(const std::string& path, bool create) : path_(path), cpu_sig_(host_cpu_signature()), build_(kernel_build_id()) {
  const bool exists = std::filesystem::exists(path);
  if (!exists && !create) fail("knowledge base {}: no such file", path);
  if (!exists) {
    auto dir = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  }
  int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_FULLMUTEX;
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    std::string m = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("knowledge base {}: cannot open: {}", path, m);
  }
  sqlite3_busy_timeout(db_, 5000);
  try {
    // Reading the schema is the first access: a file that is not SQLite fails here, before anything is written.
    Stmt tables(db_, "SELECT name FROM sqlite_master WHERE type='table'", path_);
    std::vector<std::string> names;
    while (tables.step()) names.push_back(tables.text(0));
    const bool ours = std::find(names.begin(), names.end(), "schema_version") != names.end();
    if (!names.empty() && !ours)
      fail("knowledge base {}: an SQLite file without a schema_version table is not a Genesis knowledge base", path);
    if (ours) {
      Stmt v(db_, "SELECT max(version) FROM schema_version", path_);
      int64_t ver = v.step() ? v.i64(0) : 0;
      if (ver > kSchemaVersion)
        fail("knowledge base {}: written by schema version {}, this build reads up to {}; use a newer genesis", path,
             ver, kSchemaVersion);
      if (ver < 1) fail("knowledge base {}: schema_version table is empty or invalid ({})", path, ver);
    }
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    if (!ours) {
      Txn t(db_, path_);
      exec(kSchema);
      Stmt ins(db_, "INSERT INTO schema_version(version) VALUES(?)", path_);
      ins.bind(1, kSchemaVersion).step();
      t.commit();
    }
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Kb::~Kb() {
  if (db_) sqlite3_close(db_);
}

void Kb::exec(const char* sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    fail("knowledge base {}: {}", path_, m);
  }
}

int64_t Kb::begin_run(const std::string& family, const std::string& strategy, uint64_t seed,
                      const nlohmann::json& config) {
  Stmt s(db_,
         "INSERT INTO runs(family, strategy, seed, cpu_sig, build_id, status, started, config) "
         "VALUES(?,?,?,?,?,'running',?,?)",
         path_);
  s.bind(1, family).bind(2, strategy).bind(3, int64_t(seed)).bind(4, cpu_sig_).bind(5, build_);
  s.bind(6, now_text()).bind(7, config.dump());
  s.step();
  return sqlite3_last_insert_rowid(db_);
}

void Kb::finish_run(int64_t run_id, const std::string& status, const nlohmann::json& report) {
  Stmt s(db_, "UPDATE runs SET status=?, finished=?, report=? WHERE id=?", path_);
  s.bind(1, status).bind(2, now_text()).bind(3, report.dump()).bind(4, run_id);
  s.step();
}

std::optional<Run> Kb::run(int64_t run_id) const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs WHERE id=?", kRunCols).c_str(), path_);
  s.bind(1, run_id);
  if (!s.step()) return std::nullopt;
  return read_run(s);
}

std::vector<Run> Kb::runs() const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs ORDER BY id", kRunCols).c_str(), path_);
  std::vector<Run> out;
  while (s.step()) out.push_back(read_run(s));
  return out;
}

bool Kb::add_candidate(const Candidate& c) {
  Txn t(db_, path_);
  Stmt s(db_,
         "INSERT OR IGNORE INTO candidates(run_id, eval_index, family, path, shape, tokens, regime, genome, "
         "genome_hash, cpu_sig, build_id, verdict, diagnostics, fitness, result, foreign_, created) "
         "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
         path_);
  s.bind(1, c.run_id).bind(2, c.eval_index).bind(3, c.family).bind(4, c.path).bind(5, c.shape).bind(6, c.tokens);
  s.bind(7, c.regime).bind(8, c.genome).bind(9, c.genome_hash).bind(10, c.cpu_sig.empty() ? cpu_sig_ : c.cpu_sig);
  s.bind(11, c.build_id.empty() ? build_ : c.build_id).bind(12, c.verdict).bind(13, c.diagnostics);
  s.bind(14, c.fitness).bind(15, c.result.dump()).bind(16, int64_t(c.foreign)).bind(17, now_text());
  s.step();
  const bool added = sqlite3_changes(db_) > 0;
  t.commit();
  return added;
}

std::optional<Candidate> Kb::find_candidate(const std::string& genome_hash, const std::string& family,
                                            const std::string& path, const std::string& shape, int tokens,
                                            const std::string& regime) const {
  Stmt s(db_,
         fmt::format("SELECT {} FROM candidates WHERE genome_hash=? AND family=? AND path=? AND shape=? AND "
                     "tokens=? AND regime=? AND cpu_sig=? AND build_id=? AND foreign_=0",
                     kCandidateCols)
             .c_str(),
         path_);
  s.bind(1, genome_hash).bind(2, family).bind(3, path).bind(4, shape).bind(5, tokens).bind(6, regime);
  s.bind(7, cpu_sig_).bind(8, build_);
  if (!s.step()) return std::nullopt;
  return read_candidate(s);
}

std::vector<Candidate> Kb::candidates_of_run(int64_t run_id) const {
  Stmt s(db_, fmt::format("SELECT {} FROM candidates WHERE run_id=? ORDER BY eval_index", kCandidateCols).c_str(),
         path_);
  s.bind(1, run_id);
  std::vector<Candidate> out;
  while (s.step()) out.push_back(read_candidate(s));
  return out;
}

std::optional<Candidate> Kb::candidate(int64_t id) const {
  Stmt s(db_, fmt::format("SELECT {} FROM candidates WHERE id=?", kCandidateCols).c_str(), path_);
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_candidate(s);
}

int64_t Kb::count_candidates() const {
  Stmt s(db_, "SELECT count(*) FROM candidates", path_);
  return s.step() ? s.i64(0) : 0;
}

bool Kb::offer_best(const Best& b) {
  Txn t(db_, path_);
  Stmt q(db_,
         "SELECT speedup FROM best WHERE family=? AND path=? AND shape=? AND tokens=? AND cpu_sig=? AND build_id=?",
         path_);
  q.bind(1, b.family).bind(2, b.path).bind(3, b.shape).bind(4, b.tokens).bind(5, cpu_sig_).bind(6, build_);
  if (q.step() && q.f64(0) >= b.speedup) return false;
  Stmt s(db_,
         fmt::format("INSERT OR REPLACE INTO best({}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,0,?)", kBestCols).c_str(),
         path_);
  s.bind(1, b.family).bind(2, b.path).bind(3, b.shape).bind(4, b.tokens).bind(5, cpu_sig_).bind(6, build_);
  s.bind(7, b.genome).bind(8, b.genome_hash).bind(9, b.speedup).bind(10, b.baseline_us).bind(11, b.best_us);
  s.bind(12, b.run_id).bind(13, now_text());
  s.step();
  t.commit();
  return true;
}

std::vector<Best> Kb::best(const BestQuery& q) const {
  std::string where = "1=1";
  if (!q.include_foreign) where += " AND foreign_=0 AND cpu_sig=?1 AND build_id=?2";
  if (!q.family.empty()) where += " AND family=?3";
  if (!q.path.empty()) where += " AND path=?4";
  if (!q.shape.empty()) where += " AND shape=?5";
  if (q.tokens > 0) where += " AND tokens=?6";
  Stmt s(db_, fmt::format("SELECT {} FROM best WHERE {} ORDER BY family, path, shape, tokens", kBestCols, where).c_str(),
         path_);
  if (!q.include_foreign) s.bind(1, cpu_sig_).bind(2, build_);
  if (!q.family.empty()) s.bind(3, q.family);
  if (!q.path.empty()) s.bind(4, q.path);
  if (!q.shape.empty()) s.bind(5, q.shape);
  if (q.tokens > 0) s.bind(6, q.tokens);
  std::vector<Best> out;
  while (s.step()) out.push_back(read_best(s));
  return out;
}

std::vector<Best> Kb::best_for_seeding(const std::string& family, const std::string& path, int tokens) const {
  return best(BestQuery{family, path, "", tokens, false});
}

nlohmann::json Kb::export_json() const {
  using nlohmann::json;
  json j;
  j["format"] = "genesis-kb";
  j["schema_version"] = kSchemaVersion;
  j["exported_by"] = {{"cpu_sig", cpu_sig_}, {"build_id", build_}};
  json runs_j = json::array();
  for (const auto& r : runs())
    runs_j.push_back({{"id", r.id}, {"family", r.family}, {"strategy", r.strategy}, {"seed", r.seed},
                      {"cpu_sig", r.cpu_sig}, {"build_id", r.build_id}, {"status", r.status},
                      {"started", r.started}, {"finished", r.finished}, {"config", r.config}, {"report", r.report}});
  j["runs"] = runs_j;
  json cands = json::array();
  Stmt s(db_, fmt::format("SELECT {} FROM candidates ORDER BY id", kCandidateCols).c_str(), path_);
  while (s.step()) {
    auto c = read_candidate(s);
    cands.push_back({{"run_id", c.run_id}, {"eval_index", c.eval_index}, {"family", c.family}, {"path", c.path},
                     {"shape", c.shape}, {"tokens", c.tokens}, {"regime", c.regime}, {"genome", c.genome},
                     {"genome_hash", c.genome_hash}, {"cpu_sig", c.cpu_sig}, {"build_id", c.build_id},
                     {"verdict", c.verdict}, {"diagnostics", c.diagnostics}, {"fitness", c.fitness},
                     {"result", c.result}});
  }
  j["candidates"] = cands;
  json best_j = json::array();
  for (const auto& b : best(BestQuery{"", "", "", 0, true}))
    best_j.push_back({{"family", b.family}, {"path", b.path}, {"shape", b.shape}, {"tokens", b.tokens},
                      {"cpu_sig", b.cpu_sig}, {"build_id", b.build_id}, {"genome", b.genome},
                      {"genome_hash", b.genome_hash}, {"speedup", b.speedup}, {"baseline_us", b.baseline_us},
                      {"best_us", b.best_us}, {"run_id", b.run_id}, {"updated", b.updated}});
  j["best"] = best_j;
  return j;
}

namespace {
// Field checks for import: each names the record and the field.
template <typename T>
T need(const nlohmann::json& o, const char* field, const std::string& where) {
  if (!o.is_object() || !o.contains(field)) fail("knowledge base import: {} lacks field '{}'", where, field);
  const auto& v = o.at(field);
  if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) fail("knowledge base import: {} field '{}' must be a string", where, field);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) fail("knowledge base import: {} field '{}' must be a number", where, field);
  } else {
    if (!v.is_number_integer()) fail("knowledge base import: {} field '{}' must be an integer", where, field);
  }
  return v.get<T>();
}

// The genome text of its family (nf4_gemv's, or kq_gemv's; another family's records are checked by hash alone
// when it has no parser here) and its hash.
void check_genome(const std::string& family, const std::string& text, const std::string& hash,
                  const std::string& where) {
  uint64_t h = 0;
  try {
    if (family == "kq_gemv")
      h = kernels::kq_gemv::Genome::parse(text).hash();
    else
      h = kernels::nf4_gemv::Genome::parse(text).hash();
  } catch (const Error& e) {
    fail("knowledge base import: {}: {}", where, e.what());
  }
  if (hex64(h) != hash)
    fail("knowledge base import: {}: genome_hash {} does not match the genome (expected {})", where, hash, hex64(h));
}
}  // namespace

int64_t Kb::import_json(const nlohmann::json& j) {
  if (!j.is_object() || j.value("format", "") != "genesis-kb")
    fail("knowledge base import: not a Genesis knowledge-base export (field 'format' must be \"genesis-kb\")");
  const int ver = need<int>(j, "schema_version", "export");
  if (ver > kSchemaVersion)
    fail("knowledge base import: export has schema version {}, this build reads up to {}", ver, kSchemaVersion);
  for (const char* k : {"runs", "candidates", "best"})
    if (!j.contains(k) || !j.at(k).is_array()) fail("knowledge base import: field '{}' must be an array", k);
  // Validate everything before writing anything.
  const auto& cands = j.at("candidates");
  for (size_t i = 0; i < cands.size(); ++i) {
    const auto& c = cands[i];
    std::string where = fmt::format("candidates[{}]", i);
    for (const char* f : {"family", "path", "shape", "regime", "genome", "genome_hash", "cpu_sig", "build_id",
                          "verdict", "diagnostics"})
      need<std::string>(c, f, where);
    need<int>(c, "tokens", where);
    need<int64_t>(c, "eval_index", where);
    need<double>(c, "fitness", where);
    if (std::find(kVerdicts.begin(), kVerdicts.end(), c.at("verdict").get<std::string>()) == kVerdicts.end())
      fail("knowledge base import: {} has unknown verdict '{}'", where, c.at("verdict").get<std::string>());
    check_genome(c.at("family"), c.at("genome"), c.at("genome_hash"), where);
  }
  const auto& bests = j.at("best");
  for (size_t i = 0; i < bests.size(); ++i) {
    const auto& b = bests[i];
    std::string where = fmt::format("best[{}]", i);
    for (const char* f : {"family", "path", "shape", "genome", "genome_hash", "cpu_sig", "build_id"})
      need<std::string>(b, f, where);
    need<int>(b, "tokens", where);
    for (const char* f : {"speedup", "baseline_us", "best_us"}) need<double>(b, f, where);
    check_genome(b.at("family"), b.at("genome"), b.at("genome_hash"), where);
  }
  for (size_t i = 0; i < j.at("runs").size(); ++i) {
    const auto& r = j.at("runs")[i];
    std::string where = fmt::format("runs[{}]", i);
    for (const char* f : {"family", "strategy", "cpu_sig", "build_id", "status", "started"}) need<std::string>(r, f, where);
    need<int64_t>(r, "id", where);
  }

  Txn t(db_, path_);
  int64_t added = 0;
  // Runs get new ids here; candidates and best rows follow them through this map.
  std::map<int64_t, int64_t> run_ids;
  for (const auto& r : j.at("runs")) {
    Stmt s(db_,
           "INSERT INTO runs(family, strategy, seed, cpu_sig, build_id, status, started, finished, config, report) "
           "VALUES(?,?,?,?,?,?,?,?,?,?)",
           path_);
    s.bind(1, r.at("family").get<std::string>()).bind(2, r.at("strategy").get<std::string>());
    s.bind(3, int64_t(r.value("seed", uint64_t(0)))).bind(4, r.at("cpu_sig").get<std::string>());
    s.bind(5, r.at("build_id").get<std::string>()).bind(6, "imported:" + r.at("status").get<std::string>());
    s.bind(7, r.at("started").get<std::string>());
    s.bind(8, r.contains("finished") && r.at("finished").is_string() ? r.at("finished").get<std::string>() : "");
    s.bind(9, r.value("config", nlohmann::json::object()).dump());
    s.bind(10, r.value("report", nlohmann::json()).dump());
    s.step();
    run_ids[r.at("id").get<int64_t>()] = sqlite3_last_insert_rowid(db_);
  }
  auto map_run = [&](const nlohmann::json& o) -> int64_t {
    if (!o.contains("run_id") || !o.at("run_id").is_number_integer()) return 0;
    auto it = run_ids.find(o.at("run_id").get<int64_t>());
    return it == run_ids.end() ? 0 : it->second;
  };
  for (const auto& c : cands) {
    const bool foreign = c.at("cpu_sig") != cpu_sig_ || c.at("build_id") != build_;
    Stmt s(db_,
           "INSERT OR IGNORE INTO candidates(run_id, eval_index, family, path, shape, tokens, regime, genome, "
           "genome_hash, cpu_sig, build_id, verdict, diagnostics, fitness, result, foreign_, created) "
           "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
           path_);
    s.bind(1, map_run(c)).bind(2, c.at("eval_index").get<int64_t>()).bind(3, c.at("family").get<std::string>());
    s.bind(4, c.at("path").get<std::string>()).bind(5, c.at("shape").get<std::string>());
    s.bind(6, c.at("tokens").get<int>()).bind(7, c.at("regime").get<std::string>());
    s.bind(8, c.at("genome").get<std::string>()).bind(9, c.at("genome_hash").get<std::string>());
    s.bind(10, c.at("cpu_sig").get<std::string>()).bind(11, c.at("build_id").get<std::string>());
    s.bind(12, c.at("verdict").get<std::string>()).bind(13, c.at("diagnostics").get<std::string>());
    s.bind(14, c.at("fitness").get<double>()).bind(15, c.value("result", nlohmann::json()).dump());
    s.bind(16, int64_t(foreign)).bind(17, now_text());
    s.step();
    added += sqlite3_changes(db_);
  }
  for (const auto& b : bests) {
    const bool foreign = b.at("cpu_sig") != cpu_sig_ || b.at("build_id") != build_;
    // An imported best of our own identity only replaces a worse one; foreign rows are kept for reference.
    Stmt q(db_,
           "SELECT speedup FROM best WHERE family=? AND path=? AND shape=? AND tokens=? AND cpu_sig=? AND build_id=?",
           path_);
    q.bind(1, b.at("family").get<std::string>()).bind(2, b.at("path").get<std::string>());
    q.bind(3, b.at("shape").get<std::string>()).bind(4, b.at("tokens").get<int>());
    q.bind(5, b.at("cpu_sig").get<std::string>()).bind(6, b.at("build_id").get<std::string>());
    if (q.step() && q.f64(0) >= b.at("speedup").get<double>()) continue;
    Stmt s(db_, fmt::format("INSERT OR REPLACE INTO best({}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", kBestCols).c_str(),
           path_);
    s.bind(1, b.at("family").get<std::string>()).bind(2, b.at("path").get<std::string>());
    s.bind(3, b.at("shape").get<std::string>()).bind(4, b.at("tokens").get<int>());
    s.bind(5, b.at("cpu_sig").get<std::string>()).bind(6, b.at("build_id").get<std::string>());
    s.bind(7, b.at("genome").get<std::string>()).bind(8, b.at("genome_hash").get<std::string>());
    s.bind(9, b.at("speedup").get<double>()).bind(10, b.at("baseline_us").get<double>());
    s.bind(11, b.at("best_us").get<double>()).bind(12, map_run(b)).bind(13, int64_t(foreign));
    s.bind(14, now_text());
    s.step();
    added += sqlite3_changes(db_);
  }
  t.commit();
  return added;
}

std::optional<std::string> best_genome_text(const std::string& kb_path, const std::string& family,
                                            const std::string& path, const std::string& shape, int tokens) {
  if (!std::filesystem::exists(kb_path)) return std::nullopt;
  Kb kb(kb_path, false);
  auto rows = kb.best(BestQuery{family, path, shape, tokens, false});
  if (rows.empty()) return std::nullopt;
  return rows.front().genome;
}

namespace {
// Weights of an "MxK" shape (0 if it is not one).
double shape_weights(const std::string& s) {
  const size_t x = s.find('x');
  if (x == std::string::npos || x == 0 || x + 1 >= s.size()) return 0;
  char* end = nullptr;
  const double m = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + x) return 0;
  const double k = std::strtod(s.c_str() + x + 1, &end);
  if (*end != '\0' || m <= 0 || k <= 0) return 0;
  return m * k;
}
}  // namespace

std::optional<std::string> nearest_genome_text(const std::string& kb_path, const std::string& family,
                                               const std::string& path, const std::string& shape, int tokens,
                                               std::string* from) {
  if (!std::filesystem::exists(kb_path)) return std::nullopt;
  Kb kb(kb_path, false);
  const auto rows = kb.best(BestQuery{family, path, "", tokens, false});
  const double want = shape_weights(shape);
  const Best* pick = nullptr;
  double pick_d = 0, pick_w = 0;
  for (const Best& b : rows) {
    const double w = shape_weights(b.shape);
    if (w <= 0) continue;
    if (b.shape == shape) {
      pick = &b;
      break;
    }
    const double d = want > 0 ? std::fabs(std::log(w / want)) : 0;
    if (!pick || d < pick_d || (d == pick_d && w < pick_w)) pick = &b, pick_d = d, pick_w = w;
  }
  if (!pick) return std::nullopt;
  if (from) *from = pick->shape;
  return pick->genome;
}

std::optional<kernels::nf4_gemv::Genome> best_genome(const std::string& kb_path, const std::string& family,
                                                      const std::string& path, const std::string& shape,
                                                      int tokens) {
  auto text = best_genome_text(kb_path, family, path, shape, tokens);
  if (!text) return std::nullopt;
  try {
    return kernels::nf4_gemv::Genome::parse(*text);
  } catch (const Error& e) {
    fail("knowledge base {}: best genome for {} {} {} tokens={} is invalid: {}", kb_path, family, path, shape, tokens,
         e.what());
  }
}

}  // namespace genesis::kb
