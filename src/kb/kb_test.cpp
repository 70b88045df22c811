// Tests of the knowledge base: schema checks, dedupe, best-per-key, export/import round trip, foreign records.
#include "kb/kb.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/util.h"
#include "kernels/kq_gemv/genome.h"

namespace genesis::kb {
namespace {

namespace fs = std::filesystem;
using kernels::nf4_gemv::Genome;
using kernels::nf4_gemv::Path;

class KbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("genesis_kb_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

Candidate make_candidate(const Genome& g, int64_t run, int64_t idx, double fit) {
  Candidate c;
  c.run_id = run;
  c.eval_index = idx;
  c.family = "nf4_gemv";
  c.path = "avx512vnni";
  c.shape = "768x2048";
  c.tokens = 1;
  c.genome = g.serialize();
  c.genome_hash = hex64(g.hash());
  c.verdict = "ok";
  c.fitness = fit;
  c.result = {{"fitness", fit}};
  return c;
}

Genome genome_with_align(int a) {
  Genome g = Genome::baseline(Path::avx512_vnni);
  g.loop_align = a;
  return g;
}

TEST_F(KbTest, CreatesSchemaAndReopens) {
  {
    Kb kb(file("a.sqlite"));
    EXPECT_EQ(kb.count_candidates(), 0);
  }
  Kb kb(file("a.sqlite"), false);
  EXPECT_EQ(kb.runs().size(), 0u);
}

TEST_F(KbTest, DedupeByKey) {
  Kb kb(file("a.sqlite"));
  auto run = kb.begin_run("nf4_gemv", "one-plus-one", 7, {{"shapes", {"768x2048"}}});
  Genome g = genome_with_align(16);
  EXPECT_TRUE(kb.add_candidate(make_candidate(g, run, 0, 1.1)));
  EXPECT_FALSE(kb.add_candidate(make_candidate(g, run, 1, 1.2)));  // same key: not added again
  auto c = make_candidate(g, run, 2, 1.3);
  c.shape = "2048x768";  // another key
  EXPECT_TRUE(kb.add_candidate(c));
  EXPECT_EQ(kb.count_candidates(), 2);
  auto f = kb.find_candidate(hex64(g.hash()), "nf4_gemv", "avx512vnni", "768x2048", 1, "hot");
  ASSERT_TRUE(f.has_value());
  EXPECT_DOUBLE_EQ(f->fitness, 1.1);
  EXPECT_EQ(f->result["fitness"].get<double>(), 1.1);
  EXPECT_FALSE(kb.find_candidate(hex64(g.hash()), "nf4_gemv", "avx512vnni", "768x2048", 2, "hot").has_value());
  EXPECT_EQ(kb.candidates_of_run(run).size(), 2u);
}

TEST_F(KbTest, BestPerKeyKeepsTheBetter) {
  const std::string f = file("a.sqlite");
  {
    Kb kb(f);
    Best b{"nf4_gemv", "avx512vnni", "768x2048", 1, "", "", genome_with_align(16).serialize(),
           hex64(genome_with_align(16).hash()), 1.05, 10, 9.5, 1, false, ""};
    EXPECT_TRUE(kb.offer_best(b));
    Best worse = b;
    worse.genome = genome_with_align(32).serialize();
    worse.genome_hash = hex64(genome_with_align(32).hash());
    worse.speedup = 1.01;
    EXPECT_FALSE(kb.offer_best(worse));
  }
  auto g = best_genome(f, "nf4_gemv", "avx512vnni", "768x2048", 1);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->loop_align, 16);
  EXPECT_FALSE(best_genome(f, "nf4_gemv", "avx512vnni", "2048x768", 1).has_value());
  EXPECT_FALSE(best_genome(file("missing.sqlite"), "nf4_gemv", "avx512vnni", "768x2048", 1).has_value());
}

TEST_F(KbTest, ExportImportRoundTripAndForeignSignature) {
  nlohmann::json exported;
  {
    Kb kb(file("a.sqlite"));
    auto run = kb.begin_run("nf4_gemv", "map-elites", 3, {{"shapes", {"768x2048"}}});
    kb.add_candidate(make_candidate(genome_with_align(16), run, 0, 1.1));
    kb.add_candidate(make_candidate(genome_with_align(32), run, 1, 0.9));
    kb.offer_best(Best{"nf4_gemv", "avx512vnni", "768x2048", 1, "", "", genome_with_align(16).serialize(),
                       hex64(genome_with_align(16).hash()), 1.1, 10, 9.1, run, false, ""});
    kb.finish_run(run, "finished", {{"evaluations", 2}});
    exported = kb.export_json();
  }
  // Same identity: records come back as ours.
  {
    Kb kb(file("b.sqlite"));
    EXPECT_EQ(kb.import_json(exported), 3);
    EXPECT_EQ(kb.count_candidates(), 2);
    EXPECT_TRUE(kb.find_candidate(hex64(genome_with_align(16).hash()), "nf4_gemv", "avx512vnni", "768x2048", 1,
                                  "hot")
                    .has_value());
    EXPECT_EQ(kb.runs().size(), 1u);
    EXPECT_EQ(kb.runs()[0].report["evaluations"], 2);
    // Round trip: a second export carries the same records.
    auto again = kb.export_json();
    EXPECT_EQ(again["candidates"].size(), 2u);
    EXPECT_EQ(again["candidates"][0]["genome"], exported["candidates"][0]["genome"]);
    EXPECT_EQ(again["best"][0]["genome"], exported["best"][0]["genome"]);
  }
  EXPECT_TRUE(best_genome(file("b.sqlite"), "nf4_gemv", "avx512vnni", "768x2048", 1).has_value());
  // Another CPU: rows are kept, marked foreign, never returned as ours.
  {
    Kb kb(file("c.sqlite"));
    kb.set_identity_for_test("OtherVendor-6-85-7-uc0x1-isa000000000000", kb.build());
    EXPECT_EQ(kb.import_json(exported), 3);
    EXPECT_FALSE(kb.find_candidate(hex64(genome_with_align(16).hash()), "nf4_gemv", "avx512vnni", "768x2048", 1,
                                   "hot")
                     .has_value());
    EXPECT_TRUE(kb.best(BestQuery{"nf4_gemv", "", "", 0, false}).empty());
    auto all = kb.best(BestQuery{"nf4_gemv", "", "", 0, true});
    ASSERT_EQ(all.size(), 1u);
    EXPECT_TRUE(all[0].foreign);
  }
  // c.sqlite holds rows of this machine's real identity imported as foreign: the runtime's entry point must not
  // return them either.
  EXPECT_FALSE(best_genome(file("c.sqlite"), "nf4_gemv", "avx512vnni", "768x2048", 1).has_value());
}

TEST_F(KbTest, ImportValidatesEverythingAndWritesNothingOnError) {
  Kb kb(file("a.sqlite"));
  auto run = kb.begin_run("nf4_gemv", "map-elites", 3, nlohmann::json::object());
  kb.add_candidate(make_candidate(genome_with_align(16), run, 0, 1.1));
  auto j = kb.export_json();
  Kb other(file("b.sqlite"));
  auto bad = j;
  bad["candidates"][0]["genome_hash"] = "0000000000000000";
  EXPECT_THROW(other.import_json(bad), Error);
  bad = j;
  bad["candidates"][0]["genome"] = "path=nonsense";
  EXPECT_THROW(other.import_json(bad), Error);
  bad = j;
  bad["candidates"][0].erase("verdict");
  EXPECT_THROW(other.import_json(bad), Error);
  bad = j;
  bad["schema_version"] = kSchemaVersion + 1;
  EXPECT_THROW(other.import_json(bad), Error);
  EXPECT_THROW(other.import_json(nlohmann::json::array()), Error);
  EXPECT_EQ(other.count_candidates(), 0);
  EXPECT_EQ(other.runs().size(), 0u);
}

// kq_gemv's genome text (another family's serialize()) goes through export / import, checked by its own parser; a
// record of one family with another's text, or a tampered hash, is refused.
TEST_F(KbTest, GenomeTextPerFamily) {
  kernels::kq_gemv::Genome kg = kernels::kq_gemv::Genome::baseline();
  kg.pf_dist = 2048;
  kg.row_chunk = 16;
  nlohmann::json exported;
  {
    Kb kb(file("a.sqlite"));
    auto run = kb.begin_run("kq_gemv", "map-elites", 1, nlohmann::json::object());
    Candidate c = make_candidate(genome_with_align(16), run, 0, 1.05);
    c.family = "kq_gemv";
    c.path = "avx512vnni/Q4_K";
    c.genome = kg.serialize();
    c.genome_hash = hex64(kg.hash());
    ASSERT_TRUE(kb.add_candidate(c));
    ASSERT_TRUE(kb.offer_best(Best{"kq_gemv", "avx512vnni/Q4_K", "768x2048", 1, "", "", kg.serialize(),
                                   hex64(kg.hash()), 1.05, 10, 9.5, run, false, ""}));
    kb.finish_run(run, "finished", {{"evaluations", 1}});
    exported = kb.export_json();
  }
  Kb kb(file("b.sqlite"));
  auto bad = exported;
  bad["candidates"][0]["genome_hash"] = "0000000000000000";
  EXPECT_THROW(kb.import_json(bad), Error);
  bad = exported;
  bad["best"][0]["family"] = "nf4_gemv";  // kq_gemv text under nf4_gemv: nf4's parser refuses it
  try {
    kb.import_json(bad);
    ADD_FAILURE() << "kq_gemv text imported as nf4_gemv";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("best[0]"), std::string::npos) << e.what();
  }
  EXPECT_EQ(kb.import_json(exported), 2);  // the candidate and the best record
  auto text = best_genome_text(file("b.sqlite"), "kq_gemv", "avx512vnni/Q4_K", "768x2048", 1);
  ASSERT_TRUE(text.has_value());
  EXPECT_EQ(kernels::kq_gemv::Genome::parse(*text), kg);
  EXPECT_FALSE(best_genome_text(file("b.sqlite"), "kq_gemv", "avx512vnni/Q6_K", "768x2048", 1).has_value());
}

// A shape without a record of its own gets the nearest recorded shape's genome (in weights, log scale) of the same
// family, path and tokens; other paths, tokens or a missing file give none.
TEST_F(KbTest, NearestShapeGenome) {
  kernels::kq_gemv::Genome small = kernels::kq_gemv::Genome::baseline(), big = small;
  small.pf_dist = 1024;
  big.pf_dist = 3072;
  {
    Kb kb(file("n.sqlite"));
    ASSERT_TRUE(kb.offer_best(Best{"kq_gemv", "avx2/Q4_K", "512x2048", 1, "", "", small.serialize(),
                                   hex64(small.hash()), 1.1, 10, 9, 1, false, ""}));
    ASSERT_TRUE(kb.offer_best(Best{"kq_gemv", "avx2/Q4_K", "4096x2048", 1, "", "", big.serialize(),
                                   hex64(big.hash()), 1.1, 10, 9, 1, false, ""}));
  }
  std::string from;
  auto at = [&](const char* shape) {
    auto t = nearest_genome_text(file("n.sqlite"), "kq_gemv", "avx2/Q4_K", shape, 1, &from);
    return t ? kernels::kq_gemv::Genome::parse(*t) : kernels::kq_gemv::Genome::baseline();
  };
  EXPECT_EQ(at("512x2048"), small);
  EXPECT_EQ(from, "512x2048");
  EXPECT_EQ(at("768x2048"), small);  // 1.5x the small one, 5.3x below the big one
  EXPECT_EQ(at("151936x2048"), big);
  EXPECT_EQ(from, "4096x2048");
  EXPECT_EQ(at("1448x2048"), small);  // about 2.83x from both: the nearer, the smaller
  EXPECT_FALSE(nearest_genome_text(file("n.sqlite"), "kq_gemv", "avx2/Q6_K", "512x2048", 1).has_value());
  EXPECT_FALSE(nearest_genome_text(file("n.sqlite"), "kq_gemv", "avx2/Q4_K", "512x2048", 16).has_value());
  EXPECT_FALSE(nearest_genome_text(file("missing.sqlite"), "kq_gemv", "avx2/Q4_K", "512x2048", 1).has_value());
}

TEST_F(KbTest, RefusesNonSqliteForeignAndNewerFiles) {
  {
    std::ofstream(file("junk.sqlite")) << "this is not a database, just some text long enough to be read............";
  }
  try {
    Kb kb(file("junk.sqlite"));
    FAIL() << "opened a junk file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.sqlite"), std::string::npos);
  }
  // The junk file is left as it was.
  {
    std::ifstream in(file("junk.sqlite"));
    std::string s;
    std::getline(in, s);
    EXPECT_EQ(s.rfind("this is not a database", 0), 0u);
  }
  // An SQLite file of another program.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file("other.sqlite").c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  EXPECT_THROW(Kb kb(file("other.sqlite")), Error);
  // A newer schema.
  { Kb kb(file("new.sqlite")); }
  ASSERT_EQ(sqlite3_open(file("new.sqlite").c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "UPDATE schema_version SET version=99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  try {
    Kb kb(file("new.sqlite"));
    FAIL() << "opened a newer schema";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 99"), std::string::npos) << e.what();
  }
  EXPECT_THROW(best_genome(file("new.sqlite"), "nf4_gemv", "avx512vnni", "768x2048", 1), Error);
  EXPECT_THROW(Kb kb(file("absent.sqlite"), false), Error);
}

TEST_F(KbTest, CpuSignatureIsStable) {
  auto a = host_cpu_signature();
  EXPECT_EQ(a, host_cpu_signature());
  EXPECT_NE(a.find("-isa"), std::string::npos) << a;
}

}  // namespace
}  // namespace genesis::kb
