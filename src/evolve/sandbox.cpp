// Fork-per-evaluation worker with a pipe protocol (sandbox.h). A fresh process per candidate costs about a
// millisecond here (the parent is small) and leaves no state from a crashed kernel behind.
#include "evolve/sandbox.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <exception>

#include "common/error.h"
#include "common/util.h"

namespace genesis::evolve {

namespace {
constexpr const char* kVerdictNames[] = {"ok", "wrong_result", "crash", "timeout", "invalid"};

// Frame: one status byte, then the text. The child writes it whole and exits.
enum : char { kOk = 'O', kWrong = 'W', kInvalid = 'I', kException = 'E' };

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= size_t(w);
  }
}

[[noreturn]] void child_main(int fd, const std::function<std::string()>& work) {
  // A crashing candidate must not leave core files behind.
  struct rlimit nocore = {0, 0};
  setrlimit(RLIMIT_CORE, &nocore);
  char status = kOk;
  std::string text;
  try {
    text = work();
  } catch (const WrongResult& e) {
    status = kWrong;
    text = e.what;
  } catch (const Error& e) {
    status = kInvalid;
    text = e.what();
  } catch (const std::exception& e) {
    status = kException;
    text = e.what();
  } catch (...) {
    status = kException;
    text = "unknown exception";
  }
  write_all(fd, &status, 1);
  write_all(fd, text.data(), text.size());
  ::close(fd);
  ::_exit(0);
}

std::string signal_text(int sig) {
  const char* name = sigabbrev_np(sig);
  return fmt::format("killed by SIG{} ({})", name ? name : "?", strsignal(sig));
}
}  // namespace

const char* verdict_name(Verdict v) { return kVerdictNames[int(v)]; }

SandboxResult run_sandboxed(const std::function<std::string()>& work, double timeout_s) {
  SandboxResult r;
  const double t0 = now_seconds();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) fail("sandbox: pipe failed: {}", strerror(errno));
  std::fflush(nullptr);  // the child must not flush the parent's buffered output a second time
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    fail("sandbox: fork failed: {}", strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    child_main(fds[1], work);
  }
  ::close(fds[1]);
  std::string data;
  bool timed_out = false;
  char buf[65536];
  while (true) {
    const double left = timeout_s - (now_seconds() - t0);
    if (left <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd p = {fds[0], POLLIN, 0};
    int rc = ::poll(&p, 1, int(left * 1000) + 1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) continue;  // re-check the deadline
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the child finished or died
    data.append(buf, size_t(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.wall_s = now_seconds() - t0;
  if (timed_out) {
    r.verdict = Verdict::timeout;
    r.diagnostics = fmt::format("no answer within {:.1f} s; worker killed", timeout_s);
    return r;
  }
  if (WIFSIGNALED(status)) {
    r.verdict = Verdict::crash;
    r.diagnostics = signal_text(WTERMSIG(status));
    return r;
  }
  if (data.empty()) {
    r.verdict = Verdict::crash;
    r.diagnostics = fmt::format("worker exited with status {} without a report", WEXITSTATUS(status));
    return r;
  }
  const char tag = data[0];
  std::string text = data.substr(1);
  switch (tag) {
    case kOk:
      r.verdict = Verdict::ok;
      r.payload = std::move(text);
      break;
    case kWrong:
      r.verdict = Verdict::wrong_result;
      r.diagnostics = std::move(text);
      break;
    case kInvalid:
      r.verdict = Verdict::invalid;
      r.diagnostics = std::move(text);
      break;
    default:
      r.verdict = Verdict::crash;
      r.diagnostics = "exception in worker: " + text;
      break;
  }
  return r;
}

}  // namespace genesis::evolve
