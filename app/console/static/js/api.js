// The REST API with the operator's key. The key lives in this tab's sessionStorage only and is
// never written into the page.
const KEY = "phonebooth.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, problem) {
    const errors = (problem && problem.errors) || [];
    const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
    super(errors.length ? `${detail}: ${errors.map((e) => `${e.field}: ${e.message}`).join("; ")}`
      : detail);
    this.status = status;
    this.problem = problem;
    this.errors = errors;
  }
}

export async function api(method, path, body, key = auth.key) {
  const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401 && key === auth.key) {
    auth.clear();
    window.dispatchEvent(new Event("pb-logged-out"));
  }
  if (!res.ok) {
    let problem = null;
    try { problem = await res.json(); } catch { problem = { title: res.statusText }; }
    throw new ApiError(res.status, problem);
  }
  if (res.status === 204) return null;
  return res.json();
}

export function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}
