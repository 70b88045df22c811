// Progress bar drawing; see progress.h.
#include "common/progress.h"

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/util.h"

namespace genesis {

Progress::Progress(std::string label, double total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled) {
  start_ = now_seconds();
  tty_ = isatty(fileno(stderr)) != 0;
  if (enabled_ && tty_) draw(false);
}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::set(double done) {
  done_ = done;
  if (!enabled_ || !tty_) return;
  const double t = now_seconds();
  if (t - last_draw_ >= 0.1) draw(false);
}

void Progress::set_detail(std::string detail) { detail_ = std::move(detail); }

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_) draw(true);
}

std::string Progress::amount(double v) const {
  if (unit_ != "B") return unit_.empty() ? fmt::format("{:.0f}", v) : fmt::format("{:.0f} {}", v, unit_);
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} B", v) : fmt::format("{:.1f} {}", v, units[u]);
}

void Progress::draw(bool final) {
  last_draw_ = now_seconds();
  const double el = std::max(1e-9, last_draw_ - start_);
  const double rate = done_ / el;
  std::string line = label_;
  if (total_ > 0) {
    const double f = std::clamp(done_ / total_, 0.0, 1.0);
    constexpr int kWidth = 28;
    const int full = int(std::floor(f * kWidth));
    const std::string of = unit_ == "B" ? amount(done_) + "/" + amount(total_)
                                        : fmt::format("{:.0f}/{}", done_, amount(total_));
    line += fmt::format(" [{}{}] {:3.0f}% {}", std::string(size_t(full), '#'), std::string(size_t(kWidth - full), '.'),
                        100 * f, of);
  } else {
    line += " " + amount(done_);
  }
  line += unit_ == "B" ? fmt::format(", {}/s", amount(rate)) : fmt::format(", {:.1f}/s", rate);
  if (final)
    line += fmt::format(", {:.1f} s", el);
  else if (total_ > 0 && rate > 0 && done_ < total_)
    line += fmt::format(", {:.0f} s left", (total_ - done_) / rate);
  if (!detail_.empty() && !final) line += "  " + detail_;
  if (tty_)
    fmt::print(stderr, "\r\033[K{}{}", line, final ? "\n" : "");
  else if (final)
    fmt::print(stderr, "{}\n", line);
  std::fflush(stderr);
}

}  // namespace genesis
