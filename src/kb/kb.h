// The knowledge base: one SQLite file (WAL) holding the factory's runs, every evaluated candidate and the best genome
// per (family, path, shape, tokens, CPU signature, build id). Storage and queries only; no timing, no search.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/nf4_gemv/genome.h"

struct sqlite3;

namespace genesis::kb {

// Bumped whenever the schema changes; a file written by a newer schema is refused with a clear error.
inline constexpr int kSchemaVersion = 1;

// $GENESIS_CACHE_DIR/kb.sqlite (default ~/.cache/genesis/kb.sqlite).
std::string default_path();

// The CPU signature records are keyed by: vendor, family/model/stepping, microcode, ISA bits.
std::string host_cpu_signature();

struct Run {
  int64_t id = 0;
  std::string family, strategy, status;  // status: running | finished | interrupted
  uint64_t seed = 0;
  std::string cpu_sig, build_id;
  std::string started, finished;
  nlohmann::json config;  // everything needed to resume (shapes, budget, options)
  nlohmann::json report;  // the final JSON report (null while running)
};

// One evaluated candidate on one key. `shape` is one shape ("768x2048") or a set joined by '+', the training set
// the fitness was measured over.
struct Candidate {
  int64_t id = 0;
  int64_t run_id = 0;
  int64_t eval_index = 0;  // position in its run's sequence of evaluations
  std::string family, path, shape;
  int tokens = 1;
  std::string regime = "hot";
  std::string genome;       // Genome::serialize()
  std::string genome_hash;  // hex64(Genome::hash())
  std::string cpu_sig, build_id;
  std::string verdict;      // ok | wrong_result | crash | timeout | illegal | invalid
  std::string diagnostics;  // human-readable reason for a non-ok verdict
  double fitness = 0;       // geomean speedup over the baseline genome (ok only)
  nlohmann::json result;    // full outcome: per-shape timings, screen/confirm decisions
  bool foreign = false;     // imported from another CPU signature or build: never used as ours
};

struct Best {
  std::string family, path, shape;
  int tokens = 1;
  std::string cpu_sig, build_id;
  std::string genome, genome_hash;
  double speedup = 0, baseline_us = 0, best_us = 0;
  int64_t run_id = 0;
  bool foreign = false;
  std::string updated;
};

struct BestQuery {
  std::string family, path, shape;  // empty = any
  int tokens = 0;                   // 0 = any
  bool include_foreign = false;
};

class Kb {
 public:
  // Opens (creating if absent) a knowledge base. Throws genesis::Error for a file that is not SQLite, a SQLite file
  // that is not a Genesis knowledge base, or one written by a newer schema.
  explicit Kb(const std::string& path, bool create = true);
  ~Kb();
  Kb(const Kb&) = delete;
  Kb& operator=(const Kb&) = delete;

  const std::string& path() const { return path_; }

  int64_t begin_run(const std::string& family, const std::string& strategy, uint64_t seed,
                    const nlohmann::json& config);
  void finish_run(int64_t run_id, const std::string& status, const nlohmann::json& report);
  std::optional<Run> run(int64_t run_id) const;
  std::vector<Run> runs() const;

  // One transaction per candidate, so that a kill -9 loses nothing already finished. A candidate with the same
  // dedupe key (hash, family, path, shape, tokens, regime, cpu, build) replaces nothing: returns false.
  bool add_candidate(const Candidate& c);
  // The candidate with this dedupe key on this CPU and build, if one was evaluated (never a foreign one).
  std::optional<Candidate> find_candidate(const std::string& genome_hash, const std::string& family,
                                          const std::string& path, const std::string& shape, int tokens,
                                          const std::string& regime) const;
  std::vector<Candidate> candidates_of_run(int64_t run_id) const;
  std::optional<Candidate> candidate(int64_t id) const;
  int64_t count_candidates() const;

  // Stores `b` as best for its key (this CPU and build) if it beats the present best or there is none.
  bool offer_best(const Best& b);
  std::vector<Best> best(const BestQuery& q) const;
  // Best records of this CPU and build for (family, path, tokens), any shape: used to seed a new run.
  std::vector<Best> best_for_seeding(const std::string& family, const std::string& path, int tokens) const;

  // JSON export of everything; import validates every field first, then inserts in one transaction (all or nothing).
  // Records whose CPU signature or build differ from ours are kept, marked foreign. Returns rows added.
  nlohmann::json export_json() const;
  int64_t import_json(const nlohmann::json& j);

  const std::string& cpu_sig() const { return cpu_sig_; }
  const std::string& build() const { return build_; }
  // Tests only: pretend to be another CPU or build.
  void set_identity_for_test(std::string cpu_sig, std::string build) {
    cpu_sig_ = std::move(cpu_sig);
    build_ = std::move(build);
  }

 private:
  void exec(const char* sql) const;
  std::string path_;
  sqlite3* db_ = nullptr;
  std::string cpu_sig_, build_;
};

// The best genome's text (its family's serialize()) of this CPU signature and build for (family, path, shape,
// tokens), if the knowledge base at kb_path holds one. A missing file gives nullopt; an unreadable or foreign file
// throws genesis::Error. The runtime parses it with its family's Genome::parse (and falls back to the baseline).
std::optional<std::string> best_genome_text(const std::string& kb_path, const std::string& family,
                                            const std::string& path, const std::string& shape, int tokens);
// Without a record of that exact shape: the best genome of (family, path, tokens) whose shape is nearest "MxK" in
// weights (log scale; ties to the smaller), and that shape in *from. The gate promoted it after shapes its search
// never saw, so the runtime serves it for other shapes of the same family, path and format too.
std::optional<std::string> nearest_genome_text(const std::string& kb_path, const std::string& family,
                                               const std::string& path, const std::string& shape, int tokens,
                                               std::string* from = nullptr);
// The same for nf4_gemv, parsed.
std::optional<kernels::nf4_gemv::Genome> best_genome(const std::string& kb_path, const std::string& family,
                                                      const std::string& path, const std::string& shape,
                                                      int tokens);

}  // namespace genesis::kb
