//! Target modules that come or go while the dispatcher's patch is in a transition, and the
//! objects our sets and the outgoing patch's sets live on.

use super::*;

impl Dispatcher {
    /// A target module loads during our transition: `klp_module_coming` calls our
    /// `pre_patch` for it, never `post_patch` (we are the transition patch), and at the end
    /// `post_patch` or `post_unpatch` comes with the rest.
    pub(super) fn coming_in_transition<P: Platform>(
        &mut self,
        sys: &mut P,
        object: ObjectName<'_>,
    ) -> Result<(), Errno> {
        // The enable itself calls pre_patch for every loaded object; those were counted and
        // pinned when the plan was made.
        if sys.pinned(object) {
            return Ok(());
        }
        // Only modules our sets or the outgoing patch's sets live on matter.
        let Some(object) = self.set_object(object) else {
            return Ok(());
        };
        if !sys.pin(object) {
            return Ok(());
        }
        let late = match self.phase {
            // The outgoing patch, still the enabled one, has just set up its own sets on it
            // (it comes before us in klp_patches): this is the replace restricted to it.
            Phase::Enabling => plan::replace_object(self.old.as_ref(), self.own(), object),
            // Our sets on it set up, to be torn down with the rest (or finished, if the
            // disable is reversed), as the kernel does for a C patch's callbacks.
            _ => plan::module_coming(self.own(), object),
        };
        let Ok(late) = late else {
            sys.unpin(object);
            return Err(Errno::ENOMEM);
        };
        if self.late.try_reserve(1).is_err() {
            sys.unpin(object);
            return Err(Errno::ENOMEM);
        }
        match plan::run_before(&mut self.runner(sys), &late) {
            Ok(()) => {
                // Room was reserved above: this does not allocate.
                if let Err((_, late)) =
                    fallible::push_within_capacity(&mut self.late, (object, late))
                {
                    plan::run(&mut self.runner(sys), late.reverse());
                    sys.unpin(object);
                    return Err(Errno::ENOMEM);
                }
                Ok(())
            }
            Err(errno) => {
                // The load fails: the kernel frees the module, so our pin must go now.
                sys.unpin(object);
                Err(errno)
            }
        }
    }

    /// A pinned target module goes during our transition all the same (its init failed
    /// after it came, or `rmmod -f`): `klp_cleanup_module_patches_limited` calls only our
    /// `post_unpatch`, after the outgoing patch's own teardown of its sets there (it is
    /// earlier in klp_patches and not the transition patch, so it gets both unpatch
    /// callbacks). What this transition set up on the module for us is torn down now; its
    /// remaining steps are skipped at the end, the module being unpinned.
    pub(super) fn going_in_transition<P: Platform>(&mut self, sys: &mut P, object: ObjectName<'_>) {
        let Some(object) = self.set_object(object) else {
            return;
        };
        if !sys.pinned(object) {
            return;
        }
        note(
            sys,
            format_args!("klp-rs: {object} goes during the transition"),
        );
        let side = self.own_side();
        let mut main = false;
        if let Some(entry) = self.late.iter_mut().find(|(o, _)| *o == object) {
            // Emptied in place (no removal, which could reach the panic handler): an entry
            // with no name and no steps runs nothing.
            let (_, late) = core::mem::take(entry);
            plan::run(&mut self.runner(sys), late.undo_on(object, side));
        } else if let Some(plan) = &self.plan {
            main = true;
            match self.phase {
                // Disabling: pre_unpatch ran for its sets; finish their teardown.
                Phase::Disabling => {
                    if let Some((_, going)) = self.going_plan(object) {
                        plan::run(&mut self.runner(sys), going.after.iter().copied());
                    }
                }
                _ => plan::run(&mut self.runner(sys), plan.undo_on(object, Side::New)),
            }
        }
        // Should it come back before the transition ends, it is a late module then: the main
        // plan must not run its steps a second time. The disable plan is kept for a later
        // disable, so there the module is only noted (room was reserved for every object).
        if self.phase == Phase::Disabling {
            if main && !self.gone.contains(&object) {
                let _ = fallible::push_within_capacity(&mut self.gone, object);
            }
        } else if let Some(plan) = &mut self.plan {
            plan.forget(object);
        }
        sys.unpin(object);
    }

    /// The side our own sets are on in the plans of the transition in flight.
    pub(super) fn own_side(&self) -> Side {
        match self.phase {
            Phase::Enabling => Side::New,
            _ => Side::Old,
        }
    }

    /// `object` as the tables spell it, if a set of ours or of the outgoing patch is on it.
    pub(super) fn set_object(&self, object: ObjectName<'_>) -> Option<ObjectName<'static>> {
        self.set_objects().find(|o| *o == object)
    }

    /// The objects the sets of ours and of the outgoing patch live on, as the tables spell
    /// them (repeats included).
    pub(super) fn set_objects(&self) -> impl Iterator<Item = ObjectName<'static>> + '_ {
        self.own()
            .sets
            .iter()
            .chain(self.old.iter().flat_map(|o| o.sets.iter()))
            .map(|s| s.object)
    }

    /// `object` as our tables spell it, if one of our sets is on it.
    pub(super) fn own_object(&self, object: ObjectName<'_>) -> Option<ObjectName<'static>> {
        self.own()
            .sets
            .iter()
            .map(|s| s.object)
            .find(|o| *o == object)
    }
}
