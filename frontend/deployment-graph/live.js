// Polling that survives a page left open for hours: every `interval` ms while the tab is
// visible, at once when it becomes visible again, backing off to 30 s while the server does not
// answer (a restart, a lost network, an ended session) and back to `interval` when it does.
// It stops for good only when `done(answer)` says so (a deleted deployment) or the thing is gone
// (404: deleted for good or no longer visible to this user).
import { api } from "../shared/graph.js";

export function poll(url, { interval, onAnswer, onProblem = () => {}, onGone = () => {}, done = () => false,
  maxBackoff = 30000 }) {
  let timer = null;
  let failures = 0;
  let stopped = false;
  let inFlight = false;

  const schedule = (ms) => {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(tick, ms);
  };

  async function tick() {
    if (stopped || inFlight) return;
    if (document.hidden) return; // visibilitychange starts it again
    inFlight = true;
    try {
      const answer = await api(url);
      failures = 0;
      onAnswer(answer);
      if (done(answer)) stopped = true;
    } catch (error) {
      if (error.status === 404) {
        stopped = true;
        onGone(error);
        return;
      }
      failures += 1;
      const wait = Math.min(maxBackoff, interval * 2 ** failures);
      onProblem(error, wait);
      schedule(wait);
      return;
    } finally {
      inFlight = false;
    }
    schedule(interval);
  }

  const onVisible = () => { if (!document.hidden && !stopped) schedule(0); };
  document.addEventListener("visibilitychange", onVisible);
  window.addEventListener("online", onVisible);
  schedule(0);
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
    window.removeEventListener("online", onVisible);
  };
}
