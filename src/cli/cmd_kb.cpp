// `genesis kb`: look into and share the knowledge base (list runs, show one, best genomes, export/import JSON).
#include <fmt/core.h>

#include <fstream>
#include <map>

#include "cli/command.h"
#include "common/error.h"
#include "kb/kb.h"

namespace {

using genesis::fail;
namespace kb = genesis::kb;

struct KbArgs {
  std::string file, family, io_file;
  int64_t id = 0;
  bool all = false;
};

std::string kb_file(const KbArgs& a) { return a.file.empty() ? kb::default_path() : a.file; }

void list_runs(const KbArgs& a) {
  kb::Kb k(kb_file(a), false);
  fmt::print("knowledge base {}  ({} candidates)\n", k.path(), k.count_candidates());
  fmt::print("{:>4} {:>10} {:>13} {:>6} {:>20} {:>22} {:>6} {:>8}\n", "run", "family", "strategy", "seed", "started",
             "status", "evals", "best");
  for (const auto& r : k.runs()) {
    const auto n = k.candidates_of_run(r.id).size();
    std::string best = "-";
    if (r.report.is_object() && r.report.contains("best")) best = fmt::format("{:.3f}x", r.report["best"].value("fitness", 0.0));
    std::string status = r.status;
    if (r.cpu_sig != k.cpu_sig() || r.build_id != k.build()) status += " (foreign)";
    fmt::print("{:>4} {:>10} {:>13} {:>6} {:>20} {:>22} {:>6} {:>8}\n", r.id, r.family, r.strategy, r.seed, r.started,
               status, n, best);
  }
}

void show_run(const KbArgs& a) {
  kb::Kb k(kb_file(a), false);
  auto r = k.run(a.id);
  if (!r) fail("knowledge base {}: no run {}", k.path(), a.id);
  fmt::print("run {}: {} {} seed {} status {}\nstarted {} finished {}\ncpu {}\nbuild {}\nconfig {}\n", r->id, r->family,
             r->strategy, r->seed, r->status, r->started, r->finished.empty() ? "-" : r->finished, r->cpu_sig,
             r->build_id, r->config.dump());
  auto cands = k.candidates_of_run(r->id);
  std::map<std::string, int> verdicts;
  for (const auto& c : cands) ++verdicts[c.verdict];
  std::string v;
  for (auto& [name, n] : verdicts) v += fmt::format("{} {}  ", name, n);
  fmt::print("{} candidates: {}\n", cands.size(), v);
  std::sort(cands.begin(), cands.end(), [](const auto& x, const auto& y) { return x.fitness > y.fitness; });
  fmt::print("top candidates by fitness:\n");
  for (size_t i = 0; i < cands.size() && i < 8; ++i)
    fmt::print("  #{:<5} {:.3f}x {:>12} {}{}\n", cands[i].eval_index, cands[i].fitness, cands[i].verdict,
               cands[i].genome, cands[i].result.value("promoted", false) ? "  [promoted]" : "");
  size_t shown = 0;
  for (const auto& c : cands)
    if (c.verdict != "ok" && shown++ < 5) fmt::print("  #{:<5} {}: {}\n", c.eval_index, c.verdict, c.diagnostics);
}

void show_best(const KbArgs& a) {
  kb::Kb k(kb_file(a), false);
  kb::BestQuery q;
  q.family = a.family == "nf4-gemv" ? "nf4_gemv" : a.family == "kq-gemv" ? "kq_gemv" : a.family;
  q.include_foreign = a.all;
  auto rows = k.best(q);
  if (rows.empty()) fmt::print("no best genomes{} for this CPU and build\n", q.family.empty() ? "" : " of " + q.family);
  for (const auto& b : rows)
    fmt::print("{} {} {} tokens={} {:.3f}x ({:.2f} -> {:.2f} us) run {}{}\n  {}\n", b.family, b.path, b.shape, b.tokens,
               b.speedup, b.baseline_us, b.best_us, b.run_id, b.foreign ? " [foreign]" : "", b.genome);
}

void setup_kb(CLI::App& app) {
  auto a = std::make_shared<KbArgs>();
  auto* c = app.add_subcommand("kb", "Knowledge base of tuned kernels: list, show ID, best, export FILE, import FILE");
  c->add_option("--kb", a->file, "knowledge base file (default ~/.cache/genesis/kb.sqlite)");
  c->require_subcommand(1);
  c->add_subcommand("list", "runs in the knowledge base")->callback([a] { list_runs(*a); });
  auto* show = c->add_subcommand("show", "one run: configuration, verdicts, best candidates");
  show->add_option("id", a->id, "run id")->required();
  show->callback([a] { show_run(*a); });
  auto* best = c->add_subcommand("best", "best genome per (family, path, shape, tokens) on this CPU and build");
  best->add_option("--family", a->family, "only this family (nf4_gemv, kq_gemv)");
  best->add_flag("--all", a->all, "also records of other CPUs or builds (marked foreign)");
  best->callback([a] { show_best(*a); });
  auto* exp = c->add_subcommand("export", "write everything as JSON");
  exp->add_option("file", a->io_file, "output JSON file")->required();
  exp->callback([a] {
    kb::Kb k(kb_file(*a), false);
    std::ofstream f(a->io_file);
    if (!f) fail("cannot write {}", a->io_file);
    f << k.export_json().dump(1) << "\n";
    if (!f.flush()) fail("cannot write {}: disk full?", a->io_file);
    fmt::print("exported {} to {}\n", k.path(), a->io_file);
  });
  auto* imp = c->add_subcommand("import", "add the records of a JSON export (validated; foreign CPUs kept as foreign)");
  imp->add_option("file", a->io_file, "JSON file from `genesis kb export`")->required();
  imp->callback([a] {
    std::ifstream f(a->io_file);
    if (!f) fail("cannot read {}", a->io_file);
    nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
    if (j.is_discarded()) fail("{}: not valid JSON", a->io_file);
    kb::Kb k(kb_file(*a));
    const auto n = k.import_json(j);
    fmt::print("imported {} records into {}\n", n, k.path());
  });
  // `genesis kb list --kb FILE` reads as naturally as `genesis kb --kb FILE list`: accept both.
  for (auto* sub : {static_cast<CLI::App*>(c->get_subcommand("list")), show, best, exp, imp})
    sub->add_option("--kb", a->file, "knowledge base file (default ~/.cache/genesis/kb.sqlite)");
}

}  // namespace
GENESIS_COMMAND("kb", 45, setup_kb);
