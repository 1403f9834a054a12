import DOMPurify from "dompurify";
import { marked } from "marked";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, apiRaw, q } from "../api";
import { ErrorBox, Frame, param } from "../ui";

/** Relative `src` of images resolve against the file's directory and load through the download API. */
function resolve(dir: string, rel: string): string {
  const parts = (rel.startsWith("/") ? rel : `${dir}/${rel}`).split("/");
  const out: string[] = [];
  for (const p of parts) {
    if (!p || p === ".") continue;
    if (p === "..") out.pop();
    else out.push(p);
  }
  return "/" + out.join("/");
}

/** Markdown from a VM: marked renders (GFM: tables, task lists), DOMPurify sanitises, then it is inserted. */
export function MarkdownViewer() {
  const vmId = param("vm_id") || param("id");
  const path = param("path");
  const box = useRef<HTMLDivElement>(null);
  const [error, setError] = useState<unknown>(null);
  const urls = useRef<string[]>([]);
  useEffect(() => {
    (async () => {
      try {
        const r = await api("GET", `/api/vms/${q(vmId)}/read-file?path=${q(path)}`);
        const html = await marked.parse(String(r.content), { gfm: true, async: true });
        const clean = DOMPurify.sanitize(html, {
          USE_PROFILES: { html: true },
          FORBID_TAGS: ["style", "form", "textarea", "select", "button", "iframe", "object", "embed"],
          FORBID_ATTR: ["style"],
        });
        const el = box.current!;
        el.innerHTML = clean; // sanitised above: the only HTML insertion of the dashboard
        // Task-list checkboxes stay (read-only); any other input goes.
        for (const c of el.querySelectorAll<HTMLInputElement>("input")) {
          if (c.type === "checkbox") c.disabled = true;
          else c.remove();
        }
        for (const a of el.querySelectorAll("a")) {
          a.rel = "noopener noreferrer";
          if (/^https?:/i.test(a.href)) a.target = "_blank";
        }
        const dir = path.replace(/\/[^/]*$/, "") || "/";
        for (const img of el.querySelectorAll("img")) {
          const src = img.getAttribute("src") ?? "";
          img.removeAttribute("src");
          if (!src || /^[a-z][a-z0-9+.-]*:/i.test(src) || src.startsWith("//")) continue; // only files of the VM
          apiRaw(`/api/vms/${q(vmId)}/download?path=${q(resolve(dir, src))}`)
            .then((res) => res.blob())
            .then((b) => {
              const u = URL.createObjectURL(b);
              urls.current.push(u);
              img.src = u;
            })
            .catch(() => {});
        }
      } catch (e) {
        setError(e);
      }
    })();
    return () => urls.current.forEach(URL.revokeObjectURL);
  }, [vmId, path]);
  return (
    <Frame page="md">
      <p class="row">
        <a href={`/vm_details?id=${q(vmId)}`}>← back to the VM</a>
        <span class="mono muted">{path}</span>
      </p>
      <ErrorBox error={error} />
      <section class="card">
        <article class="markdown" id="markdown" ref={box} />
      </section>
    </Frame>
  );
}
