// One step of the Create VM wizard: it builds its form from the draft (each time it is shown),
// writes what the user enters back into the draft, checks its fields before Next, and updates its
// choices in place when the live lists change.

import { Catalog } from "./catalog";
import { Draft } from "./draft";

export type Step = {
  title: string;
  render: () => HTMLElement;
  /** Shows the problems at their fields; true when the wizard may go on. */
  validate: () => boolean;
  /** The catalog changed: update the choices without disturbing what is being typed. */
  refresh: () => void;
};

export type Env = { draft: Draft; catalog: Catalog };
