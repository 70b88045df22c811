// A progress bar on stderr for long work (loading, quantizing, writing checkpoints): label, bar, done/total in the
// caller's unit, rate and time left. Redraws at most ~10 times a second; prints nothing when disabled, and only a
// final line when stderr is not a terminal (logs stay readable). Not thread-safe: update it from one thread.
#pragma once

#include <cstdint>
#include <string>

namespace genesis {

class Progress {
 public:
  // total <= 0: unknown (no bar, no time left). unit: "B" shows sizes (KiB/MiB/GiB), anything else counts.
  Progress(std::string label, double total, std::string unit = "", bool enabled = true);
  ~Progress();  // finishes the line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void add(double n) { set(done_ + n); }
  void set(double done);
  void set_detail(std::string detail);  // a short text after the numbers (e.g. the tensor being written)
  void finish();                        // draws the final state and ends the line

 private:
  void draw(bool final);
  std::string amount(double v) const;

  std::string label_, unit_, detail_;
  double total_ = 0, done_ = 0, start_ = 0, last_draw_ = -1;
  bool enabled_ = true, tty_ = false, finished_ = false;
};

}  // namespace genesis
